"""A Python client for datastore and etcd (the etcd v3 gRPC API).

``Client`` is asyncio-first; ``SyncClient`` wraps it for blocking code. Recipes built on
it (Session, Mutex, Election, STM, ServiceRegistry, Informer) are in
``datastore.client.recipes``.
"""

from datastore.client.client import Client
from datastore.client.connection import TLSConfig
from datastore.client.keepalive import KeepAlive
from datastore.client.sync import SyncClient
from datastore.client.watch import Watch, WatchBatch

__all__ = ["Client", "KeepAlive", "SyncClient", "TLSConfig", "Watch", "WatchBatch"]
