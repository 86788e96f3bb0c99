"""Simulated devices for the demo, the benchmark and the tests."""
