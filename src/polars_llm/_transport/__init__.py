"""How requests travel: the transports, error mapping, rate-limit headers."""
