"""Loaded by Python programs in the agent's pods (it is first on their PYTHONPATH).

Pods share the machine's network, each with its own loopback address; a server that binds
the wildcard address (meaning "every interface of my pod") is bound to the pod's address
instead, so two pods can serve the same port. Not part of the product: see
datastore/kube/agent/runtime.py.
"""

import os
import socket

_POD_IP = os.environ.get("KUBE_AGENT_POD_IP", "")
_bind = socket.socket.bind


def _pod_bind(self, address):
    if (_POD_IP and self.family == socket.AF_INET and isinstance(address, tuple)
            and address[0] in ("", "0.0.0.0")):
        address = (_POD_IP, *address[1:])
    return _bind(self, address)


if _POD_IP:
    socket.socket.bind = _pod_bind
