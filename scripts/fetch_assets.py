#!/usr/bin/env python
"""Fetch the offline assets into the cache (same as `dpq assets fetch`), usable before `pip install`.

Needs only the standard library and pip: CI runs it on a clean checkout before installing the package.
    python scripts/fetch_assets.py [NAME ...]
Exit code 0 when every asset is present and verified, 1 otherwise (the reason on stderr).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpq import assets  # noqa: E402  (stdlib-only module)


def main(argv=None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    try:
        assets.fetch(names or None)
    except (assets.AssetFetchError, ValueError) as exc:
        print(f"fetch_assets: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
