"""`python -m poft ...` (also what `torchrun -m poft ...` runs)."""

import sys

from .cli import main

sys.exit(main())
