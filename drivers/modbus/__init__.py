"""Modbus TCP driver: codec, read planner and the device client."""
