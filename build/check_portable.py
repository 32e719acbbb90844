"""The portability gate: what the binary needs from the host, read from its ELF files.

    python build/check_portable.py dist/airuntime dist/airuntime.dist [--max-glibc 2.28]

Reads the onefile launcher, the standalone program and every shared object of the payload (any ELF file under a
folder given) with `readelf` (binutils) and fails (exit 1, one line per problem) when a file needs
- a glibc symbol version above --max-glibc (2.28: RHEL 8, openEuler 22.03, Amazon Linux 2023, Ubuntu 20.04);
- a library (DT_NEEDED) that is neither bundled (an ELF file of that name among the files read: the payload's own
  copies, such as pyzmq's libzmq and libsodium, found through the program's $ORIGIN run path) nor on the host list:
  glibc, libgcc_s, and libstdc++ (only pyzmq's libzmq, the KV-event relay's, needs it; manylinux's policy counts it
  as part of every host: apt, dnf and microdnf are C++ programs, and the image ships it);
- a libstdc++ symbol version above GCC 8's (GLIBCXX_3.4.25, CXXABI_1.3.11: RHEL 8's libstdc++ is GCC 8's).
Prints the highest glibc version needed and the libraries needed. Used by tests/binary/test_portable.py
(`make test-binary`, CI).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# What a glibc >= 2.28 host provides (plus the dynamic loader, whose name depends on the architecture).
ALLOWED_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "libgcc_s.so.1",
    "libstdc++.so.6",
}
NOT_ALLOWED = "not bundled, and not glibc, libgcc_s or libstdc++"
# The newest libstdc++ symbol versions a host may be asked for: GCC 8's (RHEL 8).
MAX_CXX = {"GLIBCXX": (3, 4, 25), "CXXABI": (1, 3, 11)}
LOADER = re.compile(r"ld-linux-[\w-]+\.so\.\d$")
VERSION_NEED = re.compile(r"Name: (GLIBC_\d+\.\d+(?:\.\d+)?)\b")
CXX_NEED = re.compile(r"Name: (GLIBCXX|CXXABI)_(\d+(?:\.\d+)+)\b")
NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")


@dataclass
class Report:
    files: int = 0
    highest: tuple[int, ...] = (0,)
    libraries: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def glibc_version(tag: str) -> tuple[int, ...]:
    return tuple(int(part) for part in tag.removeprefix("GLIBC_").split("."))


def elf_files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        candidates = (
            sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else [path]
        )
        for candidate in candidates:
            with candidate.open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    found.append(candidate)
    return found


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True, check=True).stdout


def check(paths: list[Path], max_glibc: tuple[int, ...]) -> Report:
    report = Report()
    elves = elf_files(paths)
    bundled = {elf.name for elf in elves}
    for elf in elves:
        report.files += 1
        version_info = readelf("-V", str(elf))
        for family, number in sorted(set(CXX_NEED.findall(version_info))):
            if tuple(int(part) for part in number.split(".")) > MAX_CXX[family]:
                limit = ".".join(map(str, MAX_CXX[family]))
                report.problems.append(f"{elf}: needs {family}_{number} (limit {family}_{limit}, GCC 8)")
        versions = {glibc_version(tag) for tag in VERSION_NEED.findall(version_info)}
        if versions:
            report.highest = max(report.highest, max(versions))
        too_new = sorted(v for v in versions if v > max_glibc)
        if too_new:
            shown = ", ".join("GLIBC_" + ".".join(map(str, v)) for v in too_new)
            report.problems.append(f"{elf}: needs {shown} (limit GLIBC_{'.'.join(map(str, max_glibc))})")
        for library in NEEDED.findall(readelf("-d", str(elf))):
            report.libraries.add(library)
            if library not in ALLOWED_LIBRARIES and library not in bundled and not LOADER.match(library):
                report.problems.append(f"{elf}: needs {library} from the host ({NOT_ALLOWED})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="ELF files or folders (every ELF file below)")
    parser.add_argument("--max-glibc", default="2.28")
    args = parser.parse_args(argv)
    if shutil.which("readelf") is None:
        print("check_portable: needs readelf (Debian: apt-get install binutils)", file=sys.stderr)
        return 2
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"check_portable: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    report = check(args.paths, glibc_version(args.max_glibc))
    if report.files == 0:
        print("check_portable: no ELF file found", file=sys.stderr)
        return 1
    for problem in report.problems:
        print(problem)
    highest = "GLIBC_" + ".".join(map(str, report.highest))
    libraries = ", ".join(sorted(report.libraries))
    print(f"{report.files} ELF files; highest glibc version needed: {highest}; libraries: {libraries}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
