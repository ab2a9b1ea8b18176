"""``python -m ingestion publish FILE | consume``: see ``ingestion.stream.cli``."""

import sys

from ingestion.stream.cli import main

sys.exit(main())
