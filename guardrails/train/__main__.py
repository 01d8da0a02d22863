from guardrails.train import main

raise SystemExit(main())
