"""Benchmarks: `python -m bench.modbus_500` (see its docstring)."""
