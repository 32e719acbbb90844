"""The engine beside the sidecar: the one HTTP client that talks to it (session, auth header, bounded reads, health,
JSON calls) and its identity (which engine, which version), used by metrics, LoRA and readiness."""
