"""KV-cache events to Redis for Kthena's KV-aware router: the engine's ZeroMQ batches in, this pod's block ownership
out. Submodules, one job each: settings (our settings and Kthena's variables resolved; the flags themselves are
declared with every serve setting in runtime/config.py), service (the aiohttp hook), decode, hashing, index, resp
(Redis protocol), redis_writer, subscriber (ZeroMQ), rank (sequence, gaps, replay), relay (the task), metrics, once
(log-once). Only settings and service are imported when the relay does not run: pyzmq and msgspec load with it.
"""
