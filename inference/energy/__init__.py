"""Energy management: meter counters and power integration (`counters`)."""
