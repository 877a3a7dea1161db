"""RocksDB (through rocksdict) as the single durable store: raft log, MVCC, metadata."""
