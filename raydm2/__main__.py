"""`python -m raydm2 ...`: the `raydm2` command."""

import sys

from raydm2.service.cli import main

sys.exit(main())
