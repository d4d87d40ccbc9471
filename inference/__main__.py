"""``python -m inference serve``: the engine as an OpenAI-compatible server (``inference.serve``)."""

from inference.serve import main

raise SystemExit(main())
