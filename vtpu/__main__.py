"""``python -m vtpu``: the vtpu command."""
from vtpu.cli import main

raise SystemExit(main())
