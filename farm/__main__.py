"""``python -m farm ...``: the ``rknn-farm`` command line (see :mod:`farm.tools.cli`)."""

from farm.tools.cli import main

raise SystemExit(main())
