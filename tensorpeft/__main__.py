"""``python -m tensorpeft`` runs the command line (see :mod:`tensorpeft.cli`)."""

import sys

from .cli import main

sys.exit(main())
