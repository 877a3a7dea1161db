"""The consensus core: Raft as a deterministic state machine without I/O.

Inputs are ``tick()``, ``step(msg)``, ``propose(data)``, ``propose_conf_change(cc)``,
``read_index(ctx)``; the output is ``ready()``, which the caller persists, sends and
applies before calling ``advance(rd)``. Nothing here touches clocks, sockets or files.
"""
