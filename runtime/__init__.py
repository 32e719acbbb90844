"""airuntime: the management sidecar beside an LLM inference engine."""

__version__ = "0.1.0"
