"""``python -m cachecow``: the command line (see :mod:`cachecow.cli`)."""

from cachecow.cli import main

raise SystemExit(main())
