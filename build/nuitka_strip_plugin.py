"""Nuitka user plugin: strip debug info from the shared objects copied into the payload.

Wheels (uvloop, aiohttp, PyYAML, ...) and pyenv's stdlib extension modules ship with debug info: uvloop's loop.so is
13.6 MB, 1.6 MB stripped. Every start of the onefile decompresses and checksums the whole payload, so a smaller
payload is also a faster start. `strip --strip-unneeded` keeps the dynamic symbols that loading needs.
"""

from __future__ import annotations

import shutil
import subprocess

from nuitka.plugins.PluginBase import NuitkaPluginBase


class AirruntimeStripPlugin(NuitkaPluginBase):
    plugin_name = "airuntime-strip"
    plugin_desc = "Strip debug info from extension modules and libraries in the payload."

    def __init__(self) -> None:
        self.strip = shutil.which("strip")
        self.saved = 0

    @staticmethod
    def isAlwaysEnabled() -> bool:
        return True

    def onCopiedDLL(self, dll_filename: str) -> None:
        if self.strip is None:
            return
        import os

        before = os.path.getsize(dll_filename)
        result = subprocess.run([self.strip, "--strip-unneeded", dll_filename], capture_output=True, check=False)
        if result.returncode != 0:
            self.warning(f"strip failed for {dll_filename}: {result.stderr.decode(errors='replace').strip()}")
            return
        self.saved += before - os.path.getsize(dll_filename)
