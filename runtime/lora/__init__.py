"""LoRA adapters: each engine's load/unload API, the lifecycle manager with its desired set, and the file of
adapters that must stay loaded."""
