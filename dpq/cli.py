"""`dpq` command line (placeholder until the quantizer lands; see issue 5)."""

import sys


def main(argv=None) -> int:
    print("dpq: the quantizer is not built yet", file=sys.stderr)
    return 1
