"""``python -m loadtests.bench``: see loadtests/bench/run.py."""

import sys

from loadtests.bench.run import main

sys.exit(main())
