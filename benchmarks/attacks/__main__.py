"""``python -m benchmarks.attacks``: see :mod:`benchmarks.attacks.runner`."""
from .runner import main

if __name__ == "__main__":
    raise SystemExit(main())
