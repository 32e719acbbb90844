"""Model downloading: one transfer engine (parallel ranged parts, atomic files, resume, integrity, a lock per target
directory) over pluggable sources (HuggingFace, S3-protocol stores, GCS, Azure, mounted volumes, HTTPS)."""
