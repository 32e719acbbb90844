"""Entry point compiled by Nuitka into the binary (same as the `airuntime` console script).

The program answers to several names (`airuntime`, and `aibrix_runtime` / `aibrix_download` as symlinks to it in
the image): `sys.argv[0]` is the name it was invoked under, whatever way it was started. Nuitka puts the program's
own path there (the onefile launcher execs the unpacked program under its own path); the name as invoked is
`__compiled__.original_argv0` (the onefile launcher hands it over in NUITKA_ORIGINAL_ARGV0), so it goes back into
`sys.argv[0]` before the CLI reads it.
"""

import sys

if "__compiled__" in globals():
    sys.argv[0] = __compiled__.original_argv0 or sys.argv[0]  # type: ignore[name-defined]  # noqa: F821

from runtime.cli import main

if __name__ == "__main__":
    main()
