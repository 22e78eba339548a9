"""``python -m tokencompress ...`` (what ``torchrun -m`` and ``accelerate launch -m`` run)."""

import sys

from .cli.main import main

sys.exit(main())
