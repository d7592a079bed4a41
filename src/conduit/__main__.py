"""``python -m conduit`` runs the command line."""

import sys

from conduit.cli import main

sys.exit(main())
