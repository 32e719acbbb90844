"""The Grafana dashboard, Prometheus rules and PrometheusRule of airuntime, generated from one Python source.

`python -m deploy.observability.generate` writes them; `--prefix kthena` targets `--metrics-prefix kthena`.
"""
