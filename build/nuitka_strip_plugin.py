"""Nuitka user plugin: strip debug info from the shared objects copied into the payload.

Wheels (uvloop, aiohttp, PyYAML, ...) and pyenv's stdlib extension modules ship with debug info: uvloop's loop.so is
13.6 MB, 1.6 MB stripped. Every start of the onefile decompresses and checksums the whole payload, so a smaller
payload is also a faster start. `strip --strip-unneeded` keeps the dynamic symbols that loading needs.

Nuitka has already rewritten each library's RPATH with patchelf when this runs, and binutils' strip (2.40) can turn a
file that patchelf grew into one whose loadable segments are no longer page-aligned ("ELF load command
address/offset not page-aligned" at import; pyzmq's `_zmq.so` did). So the stripped copy replaces the file only when
every PT_LOAD segment is still aligned; otherwise the library stays as it was.
"""

from __future__ import annotations

import os
import shutil
import struct
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
        stripped = dll_filename + ".stripped"
        result = subprocess.run(
            [self.strip, "--strip-unneeded", "-o", stripped, dll_filename], capture_output=True, check=False
        )
        if result.returncode != 0:
            self.warning(f"strip failed for {dll_filename}: {result.stderr.decode(errors='replace').strip()}")
            return
        if not load_segments_aligned(stripped):
            self.info(f"kept {os.path.basename(dll_filename)} unstripped: stripping misaligned its segments")
            os.unlink(stripped)
            return
        before = os.path.getsize(dll_filename)
        shutil.copymode(dll_filename, stripped)
        os.replace(stripped, dll_filename)
        self.saved += before - os.path.getsize(dll_filename)


def load_segments_aligned(path: str) -> bool:
    """Whether every PT_LOAD segment of a 64-bit little-endian ELF file has offset = address modulo its alignment
    (the loader's rule); False for anything else, so only files known to be fine are replaced."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    if phentsize < 56 or len(table) < phentsize * phnum:
        return False
    for index in range(phnum):
        kind, _, offset, vaddr, _, _, _, align = struct.unpack_from("<IIQQQQQQ", table, index * phentsize)
        if kind == 1 and align > 1 and offset % align != vaddr % align:
            return False
    return True
