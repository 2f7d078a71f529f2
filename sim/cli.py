"""`simulate` command line (placeholder until the performance model lands; see issue 2)."""

import sys


def main(argv=None) -> int:
    print("simulate: the performance model is not built yet", file=sys.stderr)
    return 1
