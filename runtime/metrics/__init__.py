"""Metric standardization: rule data (rule_tables.py) compiled to lookups (rules.py), the text format (textformat.py),
the streaming rewriter, one scrape of the engine (scraper.py), the shared /metrics answer (answer.py) and the
sidecar's own metrics."""
