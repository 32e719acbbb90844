"""The HTTP server: the application's wiring (app.py), running it (lifecycle.py), request guards, and one module
per group of routes: probes, /metrics, downloads, LoRA adapters, the OpenAPI document."""
