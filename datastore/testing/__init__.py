"""Shared test doubles and process launchers used by tests/, e2e/ and benchmarks."""
