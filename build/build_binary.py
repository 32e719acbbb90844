"""Build the binary: `dist/airuntime` (onefile, for bare metal) and `dist/airuntime.dist/` (the same program as a
standalone folder, for the image) from ONE Nuitka run.

Run by `make binary` with the venv's Python (`.venv/bin/python build/build_binary.py`).

The portable toolchain (default; `--toolchain host` builds with the venv's own Python and gcc as before):
1. `build/portable_python.sh` gives a CPython 3.11 built with zig for glibc 2.28 (cached under
   ~/.cache/airuntime/portable-python/, keyed by that script, the Debian source versions and the target);
2. a venv of that Python next to it with exactly requirements.lock (hashes checked), pip restricted to wheels for
   glibc <= 2.28 by PEP 600's `_manylinux` hook (cached, keyed by the Python and the lock file);
3. Nuitka from that venv compiles the program and the onefile launcher with the same zig and target (CC =
   <prefix>/toolchain/clang), static libpython, ccache in front (~/.cache/ccache), so a rebuild of unchanged
   modules takes minutes. `--target` (or TARGET) picks another target on a native machine of that architecture,
   e.g. aarch64-linux-gnu.2.28 on arm64; there is no cross build.

Then, in order:
1. writes `runtime/_build_stamp.py` (git commit, UTC build date) so `airuntime --version` tells which build it is;
   the file is removed again afterwards (it is in .gitignore; a source checkout reads git instead);
2. runs Nuitka in onefile mode with `no_site` and `safe_path`, the test packages and unused parts of the
   dependencies left out, the payload unpacked to a versioned cache folder `{CACHE_DIR}/airuntime/<version>-<commit>`
   so only the first start writes it; the launcher is patched by build/onefile_patch.py;
3. copies the onefile to `dist/airuntime` and the standalone folder Nuitka made on the way to
   `dist/airuntime.dist/` (its program is `airuntime.dist/airuntime`, run as is, nothing unpacked);
4. keeps Nuitka's compilation report and a payload summary in `build/out/`, records the wall time in
   `build/out/build-time.txt` and prints it.

Options: --jobs N, --no-ccache, --keep-stamp (leave runtime/_build_stamp.py), --lto (off by default: no gain here),
--toolchain portable|host, --target TRIPLE.GLIBC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "build" / "out"
DIST = REPO / "dist"
STAMP_FILE = REPO / "runtime" / "_build_stamp.py"

# Pinned (pyproject's build extra, requirements.lock): Nuitka's per-package configuration (what it includes for
# aiohttp, uvloop, ...) and the onefile bootstrap that build/onefile_patch.py patches depend on its version.
NUITKA_VERSION = "4.3.3"

# Packages that import their own submodules by name at run time (a module-level __getattr__ over a table), which
# Nuitka's import tracing cannot see: included whole. filelock 4.3 loads filelock._soft._exclusive this way; a
# fresh build without it failed every Hub download with "No module named 'filelock._soft._exclusive'".
INCLUDE_WHOLE = ["filelock"]

# Left out of the payload: test suites of the dependencies, things airuntime never imports at run time, and
# packages the sidecar will not use even when installed beside it (hf_xet: huggingface_hub falls back to HTTP).
NOFOLLOW = [
    "*.tests",
    "*.test",
    "*.testing",
    "*.conftest",
    "test",
    "unittest",
    "doctest",
    "pydoc",
    "pydoc_data",
    "tkinter",
    "turtle",
    "idlelib",
    "lib2to3",
    "distutils",
    "setuptools",
    "pkg_resources",
    "pip",
    "ensurepip",
    "venv",
    "IPython",
    "pytest",
    "_pytest",
    "hf_xet",
    "numpy",
    "mypy",
    "ruff",
    # the sidecar renders its own metrics (runtime/metrics/registry.py); prometheus_client is a test dependency
    "prometheus_client",
    "twisted",
    # aiohttp's optional accelerators and the pytest plugin
    "aiohttp.pytest_plugin",
    "aiohttp.worker",
    "gunicorn",
    "brotli",
    "brotlicffi",
    "aiodns",
    # stdlib parts only reachable through code airuntime never runs (from the compilation report):
    # statistics/fractions <- random's self-test; pyexpat <- xmlrpc; bz2/lzma <- shutil/tarfile/zipfile (optional
    # there). Kept although they look unused: decimal (filelock imports it at top level), ctypes (huggingface_hub's
    # utils._terminal does).
    "statistics",
    "fractions",
    "xmlrpc",
    "xml",
    "pyexpat",
    "bz2",
    "lzma",
    "_bz2",
    "_lzma",
    # CJK codecs (C extensions). Nuitka ships every encodings.* module and their codecs regardless of these (tried:
    # 119 of 120 encodings modules and the _codecs_*.so stayed), ~1 MB of the folder
    "_codecs_cn",
    "_codecs_hk",
    "_codecs_iso2022",
    "_codecs_jp",
    "_codecs_kr",
    "_codecs_tw",
    "_multibytecodec",
    # optional accelerators of code paths airuntime does not use: PyYAML's libyaml binding (rules files are
    # tiny; yaml.safe_load is pure Python anyway) and aiohttp's websocket reader (no websockets here)
    "yaml._yaml",
    "_yaml",
    "aiohttp._websocket.reader_c",
    # frozenlist's accelerator is C++ (needs the host's libstdc++.so.6, which the portability gate forbids);
    # frozenlist falls back to its pure-Python FrozenList, used only for aiohttp's signal lists
    "frozenlist._frozenlist",
    # huggingface_hub: the sidecar uses HfApi's listing and its errors; not the CLI, inference clients (~100
    # generated modules), serialization, framework mixins, webhooks/OAuth servers, nor HfFileSystem (fsspec)
    "huggingface_hub.cli",
    "huggingface_hub.commands",
    "huggingface_hub.inference",
    "huggingface_hub.serialization",
    "huggingface_hub.hf_file_system",
    "huggingface_hub.keras_mixin",
    "huggingface_hub.fastai_utils",
    "huggingface_hub.hub_mixin",
    "huggingface_hub._tensorboard_logger",
    "huggingface_hub._webhooks_server",
    "huggingface_hub._webhooks_payload",
    "huggingface_hub._oauth",
    "huggingface_hub._hot_reload",
    "huggingface_hub._sandbox",
    "huggingface_hub._sandbox_cache",
    "fsspec",
    # httpx2's command line (pulls pygments, ~320 modules, and rich). Not tqdm's submodules: tqdm/__init__ imports
    # tqdm.gui, and the e2e LoRA test caught `No module named 'tqdm.gui'` when it was left out.
    "httpx2._main",
    "pygments",
    "rich",
    "ipywidgets",
]


def log(message: str) -> None:
    print(f"build_binary: {message}", flush=True)


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def ensure_debian_tools(use_ccache: bool, host_compiler: bool) -> None:
    """patchelf (Nuitka needs it), ccache, readelf (the portability gate); gcc only for the host toolchain."""
    wanted = ["patchelf"] + (["ccache"] if use_ccache else [])
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if shutil.which("readelf") is None:
        missing.append("binutils")
    if host_compiler and shutil.which("gcc") is None and shutil.which("cc") is None:
        missing.append("gcc")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log(f"missing {', '.join(missing)}: install them (Debian: apt-get install {' '.join(missing)})")
        if "patchelf" in missing or "gcc" in missing or "binutils" in missing:
            sys.exit(1)
        return
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env, stdout=subprocess.DEVNULL)


def ensure_nuitka(python: Path) -> None:
    """Nuitka comes from the lock file, like everything else that goes into the binary."""
    probe = "import importlib.metadata as m\ntry:\n print(m.version('nuitka'))\nexcept Exception:\n print('missing')"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False).stdout.strip()
    if found != NUITKA_VERSION:
        log(f"nuitka {found or 'missing'} in {python}, want {NUITKA_VERSION} (requirements.lock): run make venv")
        sys.exit(1)


def default_target() -> str:
    return os.environ.get("TARGET") or f"{platform.machine()}-linux-gnu.2.28"


def glibc_of(target: str) -> tuple[int, int]:
    """(2, 28) of x86_64-linux-gnu.2.28."""
    major, minor = target.rsplit("gnu.", 1)[1].split(".")[:2]
    return int(major), int(minor)


def portable_python(target: str) -> Path:
    """The prefix of the CPython built by build/portable_python.sh for target (built now unless cached)."""
    env = {**os.environ, "TARGET": target, "PYTHON": sys.executable}
    try:
        result = subprocess.run(
            ["bash", str(REPO / "build" / "portable_python.sh")], env=env, stdout=subprocess.PIPE, text=True, check=True
        )
    except subprocess.CalledProcessError as exc:
        log(f"build/portable_python.sh failed (exit {exc.returncode})")
        sys.exit(1)
    return Path(result.stdout.strip().splitlines()[-1])


def manylinux_hook(glibc: tuple[int, int]) -> str:
    return (
        '"""Written by build/build_binary.py: pip here takes only wheels for glibc <= '
        f'{glibc[0]}.{glibc[1]} (PEP 600)."""\n\n\n'
        "def manylinux_compatible(major: int, minor: int, arch: str) -> bool:\n"
        f"    return (major, minor) <= {glibc}\n"
    )


def build_venv(prefix: Path, glibc: tuple[int, int], latest: bool) -> Path:
    """A venv of the portable Python with exactly requirements.lock; reused while the Python and the lock stay.

    With `latest` (make latest: AIRUNTIME_BUILD_REQUIREMENTS=latest) the newest releases of the runtime and build
    dependencies instead, in a venv made afresh every time.
    """
    lock = REPO / "requirements.lock"
    hook = manylinux_hook(glibc)
    key = "latest" if latest else hashlib.sha256(lock.read_bytes() + hook.encode()).hexdigest()[:12]
    venv = prefix.parent / f"venv-{prefix.name}-{key}"
    if (venv / ".complete").exists() and not latest:
        return venv
    log(f"venv {venv} from {'the newest releases' if latest else 'requirements.lock'}")
    shutil.rmtree(venv, ignore_errors=True)
    run([str(prefix / "bin" / "python3"), "-m", "venv", str(venv)])
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "_manylinux.py").write_text(hook, encoding="utf-8")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    if latest:
        run([*pip, "install", "--upgrade", f"{REPO}[build]"])
        run([*pip, "uninstall", "-y", "airuntime"], stdout=subprocess.DEVNULL)  # compiled from the checkout
    else:
        run([*pip, "install", "--require-hashes", "--no-deps", "-r", str(lock)])
    run([*pip, "check"], stdout=subprocess.DEVNULL)
    (venv / ".complete").touch()
    return venv


def git_commit() -> str:
    """The checkout's commit; AIRUNTIME_COMMIT wins (a container build has no .git)."""
    if os.environ.get("AIRUNTIME_COMMIT"):
        return os.environ["AIRUNTIME_COMMIT"]
    try:
        commit = run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit or "unknown"


def tree_is_dirty() -> bool:
    """Uncommitted changes (or new files) in what goes into the binary."""
    if os.environ.get("AIRUNTIME_COMMIT"):
        return False
    try:
        status = run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "runtime", "pyproject.toml", "build"],
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(status.strip())


def project_version() -> str:
    namespace: dict[str, str] = {}
    exec((REPO / "runtime" / "__init__.py").read_text(encoding="utf-8"), namespace)
    return namespace["__version__"]


def static_libpython() -> str:
    """'yes' when this interpreter ships a static libpython (pyenv, python.org builds, Debian's -dev), else 'no'."""
    libpl = sysconfig.get_config_var("LIBPL") or ""
    names = [sysconfig.get_config_var("LIBRARY") or "", f"libpython{sysconfig.get_python_version()}-pic.a"]
    for name in names:
        if name.endswith(".a") and (Path(libpl) / name).is_file():
            return "yes"
    return "no"


def nuitka_command(python: Path, onefile_dir: str, jobs: int, lto: bool, static: str) -> list[str]:
    cmd = [
        str(python),
        "-m",
        "nuitka",
        "--mode=onefile",
        f"--output-dir={OUT / 'nuitka'}",
        "--output-filename=airuntime",
        "--python-flag=no_site",
        "--python-flag=safe_path",
        f"--static-libpython={static}",
        f"--lto={'yes' if lto else 'no'}",
        f"--jobs={jobs}",
        "--assume-yes-for-downloads",
        "--include-package=runtime",
        "--include-package-data=runtime.metrics",
        "--include-package-data=runtime.server",  # openapi.json
        "--noinclude-setuptools-mode=nofollow",
        "--noinclude-pytest-mode=nofollow",
        "--noinclude-unittest-mode=nofollow",
        "--noinclude-pydoc-mode=nofollow",
        "--noinclude-IPython-mode=nofollow",
        "--noinclude-default-mode=nofollow",
        f"--onefile-tempdir-spec={{CACHE_DIR}}/airuntime/{onefile_dir}",
        "--onefile-cache-mode=cached",
        f"--report={OUT / 'compilation-report.xml'}",
        "--report-diffable",
        f"--user-plugin={REPO / 'build' / 'nuitka_strip_plugin.py'}",
        "--deployment",
        "--quiet",
        "--show-scons" if os.environ.get("AIRUNTIME_BUILD_VERBOSE") else "--no-progressbar",
    ]
    if os.environ.get("AIRUNTIME_BUILD_VERBOSE"):
        cmd.remove("--quiet")
    cmd += [f"--include-package={name}" for name in INCLUDE_WHOLE]
    cmd += [f"--nofollow-import-to={name}" for name in NOFOLLOW]
    cmd.append(str(REPO / "build" / "entry.py"))
    return cmd


def summarize_report(report: Path, dist_dir: Path, target: Path) -> str:
    """Module count by top-level package and the largest files of the unpacked payload, from the report."""
    lines: list[str] = []
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError) as exc:
        return f"(no report: {exc})"
    counts: dict[str, int] = {}
    for module in root.iter("module"):
        name = module.get("name", "")
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + 1
    lines.append(f"modules compiled: {sum(counts.values())}")
    for top, count in sorted(counts.items(), key=lambda kv: -kv[1])[:25]:
        lines.append(f"  {count:5d}  {top}")
    if dist_dir.is_dir():
        files = [(p.stat().st_size, p.relative_to(dist_dir)) for p in dist_dir.rglob("*") if p.is_file()]
        total = sum(size for size, _ in files)
        lines.append(f"unpacked payload: {len(files)} files, {total / 1e6:.1f} MB; largest:")
        for size, rel in sorted(files, reverse=True)[:15]:
            lines.append(f"  {size / 1e6:7.2f} MB  {rel}")
    lines.append(f"onefile: {target.stat().st_size / 1e6:.1f} MB")
    return "\n".join(lines)


def prune_cache(prefix: Path, venv: Path, target: str) -> None:
    """Drop the portable Pythons (and their venvs) of this target that older builds left, unused for a day."""
    day_ago = time.time() - 86_400
    for old in prefix.parent.glob(f"*{target}-*"):
        if old in (prefix, venv) or not old.is_dir():
            continue
        marker = old / ".complete"
        if (marker if marker.exists() else old).stat().st_mtime < day_ago:
            log(f"removing {old} (an older build's)")
            shutil.rmtree(old, ignore_errors=True)


def toolchain(args: argparse.Namespace, env: dict[str, str]) -> tuple[Path, str]:
    """(the Python that runs Nuitka, --static-libpython value); sets the compiler variables in env."""
    if args.toolchain == "host":
        return Path(sys.executable), static_libpython()
    prefix = portable_python(args.target)
    venv = build_venv(prefix, glibc_of(args.target), os.environ.get("AIRUNTIME_BUILD_REQUIREMENTS") == "latest")
    prune_cache(prefix, venv, args.target)
    for used in (prefix, venv):
        (used / ".complete").touch()  # the time of last use, for prune_cache
    env["CC"] = str(prefix / "toolchain" / "clang")
    env.pop("CXX", None)
    env["ZIG_GLOBAL_CACHE_DIR"] = env["ZIG_LOCAL_CACHE_DIR"] = str(prefix.parent / "zig-cache")
    log(f"portable toolchain: {prefix.name} ({(prefix / 'BUILD-INFO').read_text().strip().replace(chr(10), ', ')})")
    return venv / "bin" / "python", "yes"


def publish(onefile: Path, folder: Path) -> tuple[Path, Path]:
    """dist/airuntime (the onefile) and dist/airuntime.dist/ (standalone: its program renamed `airuntime`)."""
    target = DIST / "airuntime"
    tmp = target.with_suffix(".tmp")
    shutil.copy2(onefile, tmp)
    os.replace(tmp, target)
    standalone = DIST / "airuntime.dist"
    staging = DIST / ".airuntime.dist.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging, symlinks=True)
    programs = [p for p in staging.iterdir() if p.suffix == ".bin" and p.is_file()]
    if len(programs) != 1:
        raise SystemExit(f"build_binary: expected one program (*.bin) in {folder}, found {programs}")
    programs[0].rename(staging / "airuntime")
    shutil.rmtree(standalone, ignore_errors=True)
    os.replace(staging, standalone)
    return target, standalone


def write_stamp(commit: str, built: str) -> None:
    STAMP_FILE.write_text(
        f'"""Written by build/build_binary.py; not in git."""\n\nCOMMIT = "{commit}"\nBUILD_DATE = "{built}"\n',
        encoding="utf-8",
    )


def ccache_env(env: dict[str, str], use_ccache: bool) -> None:
    env.setdefault("CCACHE_DIR", str(Path.home() / ".cache" / "ccache"))
    env.setdefault("NUITKA_CACHE_DIR", str(Path.home() / ".cache" / "Nuitka"))
    if not use_ccache:
        env["NUITKA_CCACHE_BINARY"] = "NONE"
    elif shutil.which("ccache"):
        env["NUITKA_CCACHE_BINARY"] = shutil.which("ccache") or "ccache"
        subprocess.run(["ccache", "--zero-stats"], env=env, stdout=subprocess.DEVNULL, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-ccache", action="store_true")
    parser.add_argument("--keep-stamp", action="store_true")
    parser.add_argument("--lto", action="store_true")
    parser.add_argument(
        "--toolchain", choices=["portable", "host"], default=os.environ.get("AIRUNTIME_TOOLCHAIN", "portable")
    )
    parser.add_argument("--target", default=default_target(), help="zig target, e.g. aarch64-linux-gnu.2.28")
    args = parser.parse_args()

    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    DIST.mkdir(exist_ok=True)
    ensure_debian_tools(not args.no_ccache, args.toolchain == "host")
    env = dict(os.environ)
    python, static = toolchain(args, env)
    ensure_nuitka(python)
    # the patch of the onefile launcher goes into the Nuitka that compiles (the portable venv's)
    run([str(python), str(REPO / "build" / "onefile_patch.py")])

    version, commit = project_version(), git_commit()
    now = dt.datetime.now(dt.UTC)
    # The payload folder: one per release build of a commit; a build of uncommitted changes gets its own, so it
    # never reuses (or is taken for) a payload unpacked by another build of the same commit.
    onefile_dir = f"{version}-{commit}"
    if tree_is_dirty():
        commit = f"{commit}-dirty"
        onefile_dir = f"{version}-{commit}-{now:%Y%m%dT%H%M%SZ}"
    write_stamp(commit, now.strftime("%Y-%m-%dT%H:%M:%SZ"))

    ccache_env(env, not args.no_ccache)
    env["PYTHONPATH"] = str(REPO)  # `runtime` from this checkout, installed in the venv or not

    cmd = nuitka_command(python, onefile_dir, args.jobs, args.lto, static)
    (OUT / "nuitka-command.txt").write_text(" ".join(cmd) + "\n", encoding="utf-8")
    log(
        f"airuntime {version} commit {commit}, payload folder {{CACHE_DIR}}/airuntime/{onefile_dir}: "
        f"nuitka {NUITKA_VERSION}, {args.jobs} jobs, toolchain {args.toolchain} "
        f"({args.target if args.toolchain == 'portable' else 'host gcc'}), static libpython {static}, "
        f"ccache {'off' if args.no_ccache else env['CCACHE_DIR']}"
    )
    try:
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
    except subprocess.CalledProcessError as exc:
        log(f"nuitka failed with exit code {exc.returncode}; command in {OUT / 'nuitka-command.txt'}")
        sys.exit(exc.returncode or 1)
    finally:
        if not args.keep_stamp:
            STAMP_FILE.unlink(missing_ok=True)

    target, standalone = publish(OUT / "nuitka" / "airuntime", OUT / "nuitka" / "entry.dist")
    elapsed = time.monotonic() - started
    summary = summarize_report(OUT / "compilation-report.xml", standalone, target)
    (OUT / "payload-summary.txt").write_text(summary + "\n", encoding="utf-8")
    ccache_stats = ""
    if not args.no_ccache and shutil.which("ccache"):
        stats = subprocess.run(["ccache", "--show-stats"], env=env, capture_output=True, text=True, check=False)
        ccache_stats = " ".join(line.strip() for line in stats.stdout.splitlines() if "Hits:" in line)[:200]
    record = (
        f"{elapsed:.0f} s wall, {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}, jobs={args.jobs}, "
        f"nuitka={NUITKA_VERSION}, toolchain={args.toolchain} {args.target}, commit={commit}, "
        f"size={target.stat().st_size} bytes; ccache: {ccache_stats}\n"
    )
    (OUT / "build-time.txt").write_text(record, encoding="utf-8")
    print(summary)
    log(f"dist/airuntime built in {elapsed:.0f} s ({target.stat().st_size / 1e6:.1f} MB) and dist/airuntime.dist/")


if __name__ == "__main__":
    main()
