from gcnet.cli import main

raise SystemExit(main())
