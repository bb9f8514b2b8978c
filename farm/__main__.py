"""``python -m farm ...``: the ``rknn-farm`` command line (see :mod:`farm.cli`)."""

from farm.cli import main

raise SystemExit(main())
