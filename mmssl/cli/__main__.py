"""``python -m mmssl.cli`` (e.g. under torchrun)."""

from mmssl.cli import main

raise SystemExit(main())
