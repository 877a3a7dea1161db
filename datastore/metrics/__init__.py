"""Prometheus metrics with etcd's names, types, labels and buckets.

The hot paths count in plain ints and cheap histograms (:mod:`.hist`) owned by the
component that sees the event; collectors (:mod:`.member`, :mod:`.grpc`) turn them into
metric families only when ``/metrics`` is scraped. Each member has a registry of its own
(:func:`.registry.member_registry`), so members embedded in one process do not mix.
"""
