#!/usr/bin/env bash
# The only way the generated *_pb2*.py files change. Run from anywhere.
# grpcio-tools is pinned in pyproject's [dev] extra to match the grpcio runtime floor.
set -euo pipefail
cd "$(dirname "$0")/../.."
protos=(datastore/api/mvccpb/kv.proto datastore/api/authpb/auth.proto
        datastore/api/etcdserverpb/rpc.proto datastore/api/raftpb/raft.proto
        datastore/api/internalpb/internal.proto
        datastore/api/v3lockpb/v3lock.proto datastore/api/v3electionpb/v3election.proto)
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "${protos[@]}"
# Packages without services get an empty *_pb2_grpc.py; drop them so the tree stays tidy.
for f in datastore/api/*/*_pb2_grpc.py; do
  grep -q "class " "$f" || rm -f "$f"
done
