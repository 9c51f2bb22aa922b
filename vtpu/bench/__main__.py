"""``python -m vtpu.bench``: the same as ``vtpu bench``."""
from vtpu.bench import main

raise SystemExit(main())
