"""Energy management: meter counters and power integration (`counters`), machine state
(`state`), KPIs per interval, hour, shift and 15-minute demand (`kpi`), and the expected-power
baseline with its CUSUM alarm (`baseline`)."""
