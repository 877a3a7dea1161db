"""``datastore kube``: a local Kubernetes control plane whose storage is the datastore.

Demo and test tooling: real kube-apiserver, kube-controller-manager, kube-scheduler and kwok
(fake nodes), built from their Go modules by ``scripts/build_refs.py``, over N datastore
members (or etcd 3.6 or 3.4, or kine, to compare).
"""
