# Thin aliases; CI runs ./scripts/test.sh (= make test).
PY ?= .venv/bin/python

.PHONY: test lint proto soak bench bench3
test:            ## install deps (incl. etcd oracle) and run the suite, as CI does
	./scripts/test.sh
lint:
	$(PY) -m ruff check .
proto:           ## regenerate protobuf/gRPC code (commit the result)
	PATH=$(dir $(PY)):$$PATH datastore/api/genproto.sh
soak:            ## long runs outside CI: raft sim soak, fault soaks, 100 differential seeds
	$(PY) -m pytest -m slow tests e2e
	DS_DIFF_NSEEDS=100 $(PY) -m pytest e2e/test_differential.py
bench:           ## datastore vs etcd 3.4, etcd 3.6 and kine, single member, ratio table
	$(PY) scripts/bench_compare.py --out bench-1.md
bench3:          ## the same with three members (kine stays one process)
	$(PY) scripts/bench_compare.py --cluster 3 --out bench-3.md
