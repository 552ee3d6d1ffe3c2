"""``python -m labelzip`` runs the command-line tool."""

import sys

from labelzip.cli import main

sys.exit(main())
