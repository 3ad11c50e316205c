"""`python -m ptune` (and so `torchrun -m ptune train ...`)."""

import sys

from ptune.cli import main

sys.exit(main())
