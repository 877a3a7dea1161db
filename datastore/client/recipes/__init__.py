"""Coordination recipes on the Client, wire-compatible with etcd's Go clientv3/concurrency.

Session (a kept-alive lease), Mutex (``etcdctl lock``), Election (``etcdctl elect``),
run_stm (optimistic transactions), ServiceRegistry (lease-bound instances, live-set
watch) and Informer (list + watch into a local cache with handlers).
"""

from datastore.client.recipes.election import Election
from datastore.client.recipes.informer import Informer
from datastore.client.recipes.mutex import LockedError, Mutex
from datastore.client.recipes.registry import Registration, ServiceRegistry
from datastore.client.recipes.session import Session
from datastore.client.recipes.stm import STM, Isolation, STMConflictError, run_stm

__all__ = ["STM", "Election", "Informer", "Isolation", "LockedError", "Mutex", "Registration",
           "STMConflictError", "ServiceRegistry", "Session", "run_stm"]
