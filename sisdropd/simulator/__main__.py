"""``python -m sisdropd.simulator``: the same as ``sisdropd fake-canvas``."""

from sisdropd.simulator.command import main

raise SystemExit(main())
