"""``datastore kube agent``: a node agent standing in for the kubelet, for demos and tests.

It registers Nodes, runs the pods bound to them as local processes (their own command,
args, environment, volumes, probes and restarts), reports their status through the API
server, and provisions hostPath volumes for claims. Not a product: it gives the pods no
isolation beyond private mount, UTS and PID namespaces, ignores security contexts and
resource limits, and shares the machine's network (each pod on its own loopback address).
"""
