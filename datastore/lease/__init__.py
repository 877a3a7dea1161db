"""Leases: TTL-bound ownership of keys, expired by the leader through the log."""
