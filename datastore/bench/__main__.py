"""``python -m datastore.bench``: the same options as ``datastore bench``."""

from __future__ import annotations

import argparse
import sys

from datastore.bench import add_arguments, run
from datastore.util.progress import run_quietly


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datastore.bench",
                                     description="etcd v3 load generator")
    add_arguments(parser)
    ns = parser.parse_args(argv)
    return run_quietly(lambda: run(ns))


if __name__ == "__main__":
    sys.exit(main())
