"""``python -m benchmarks.similarity``: see :mod:`benchmarks.similarity.cli`."""

import sys

from benchmarks.similarity.cli import main

sys.exit(main())
