#!/usr/bin/env python3
"""Build (or reuse from the cache) the real programs that test the datastore.

    python3 scripts/build_refs.py            # all: etcd 3.6, bbolt, kine, kwok, Kubernetes
    python3 scripts/build_refs.py --suite    # those the test suite runs (not the bench-only kine)
    python3 scripts/build_refs.py etcd kine  # only these

Binaries are cached outside the checkout (``~/.cache/datastore/refs``, or
``$DATASTORE_REFS_CACHE``); see datastore/testing/refs.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datastore.testing.refs import build_all

if __name__ == "__main__":
    args = sys.argv[1:]
    suite_only = "--suite" in args
    names = [a for a in args if a != "--suite"] or None
    sys.exit(build_all(names, log=lambda line: print(line, flush=True), suite_only=suite_only))
