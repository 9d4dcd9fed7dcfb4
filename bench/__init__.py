"""Benchmarks of the gateway firmware on the unix port against the local Realer cloud (issue 6)."""
