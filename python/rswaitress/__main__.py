"""``python -m rswaitress ...`` is the same as ``rswaitress-serve ...``."""

import sys

from rswaitress.runner import PROGRAM, run

if __name__ == "__main__":
    sys.exit(run([PROGRAM] + sys.argv[1:]))
