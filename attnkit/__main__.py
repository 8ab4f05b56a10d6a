"""``python -m attnkit`` runs the CLI."""

import sys

from attnkit.cli import main

sys.exit(main())
