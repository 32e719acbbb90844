"""The HTTP server: application wiring, probes and the /metrics route."""
