"""Entry point compiled by Nuitka into `dist/airuntime` (same as the `airuntime` console script)."""

from runtime.cli import main

if __name__ == "__main__":
    main()
