"""``datastore grpc-proxy start`` and ``datastore gateway start`` (etcd's proxy and L4 gateway)."""
