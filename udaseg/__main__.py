from udaseg.cli import main

raise SystemExit(main())
