"""kvoperator: runs and scales datastore clusters described by ``DatastoreCluster`` objects.

One pure planner (:mod:`kvoperator.planner`) decides the next step; a reconciler
(:mod:`kvoperator.reconcile`) observes, plans, acts and writes status through a platform:
local processes (:mod:`kvoperator.local`) or Kubernetes (:mod:`kvoperator.kube`).
"""
