"""Metric standardization: rule tables, the streaming rewriter, the engine scraper and the sidecar's own metrics."""
