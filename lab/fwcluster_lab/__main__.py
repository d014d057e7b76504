"""`python -m fwcluster_lab`: the lab command line (bin/lab calls this)."""

import sys

from .cli import main

sys.exit(main())
