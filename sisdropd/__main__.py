from sisdropd.cli import main

raise SystemExit(main())
