"""Wiring around the consensus core: config, durable raft log, apply, the node loop."""
