"""Multi-version key-value store with etcd's revision semantics."""
