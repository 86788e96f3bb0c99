"""shopfloor-agent: reads PLCs and meters, keeps every sample until the broker has it."""

__version__ = "0.1.0"
