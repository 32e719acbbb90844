"""Sources of model files. Each backend lists files (with sizes and whatever checksums the source gives) and reads
byte ranges; the transfer engine does everything else."""
