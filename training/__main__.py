"""``python -m training``: the entry point torchrun starts on every rank."""

import sys

from training.cli import main

sys.exit(main())
