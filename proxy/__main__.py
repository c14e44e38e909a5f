"""``python -m proxy`` is the ``dicomweb-proxy`` command."""

from proxy.cli import main

raise SystemExit(main())
