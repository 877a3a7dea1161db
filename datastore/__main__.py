from datastore.cli import main

raise SystemExit(main())
