#!/usr/bin/env bash
# A CPython 3.11 for the portable binary: built from Debian 12's source packages with zig's clang for a glibc
# 2.28 target, as a static libpython (what Nuitka's --static-libpython=yes links) with its own zlib, OpenSSL and
# libffi linked statically into the extension modules that need them. Everything this Python and the program
# Nuitka makes from it need at run time is glibc >= 2.28 (+ libgcc_s): RHEL/Rocky/Alma 8+, UBI 8/9, Amazon Linux
# 2023, openEuler 22.03, Ubuntu 20.04+, Debian 10+.
#
#   bash build/portable_python.sh                 prints the prefix (build it first unless cached)
#   TARGET=aarch64-linux-gnu.2.28 bash build/portable_python.sh    on a native arm64 machine (not cross)
#
# Inputs: Debian's source packages python3.11, openssl, libffi and zlib (a deb-src entry is added for them), and
# zig from the `ziglang` wheel pinned in requirements.lock (ZIG=path, else `python -m ziglang` of PYTHON, default
# .venv/bin/python). Only the libraries of the stdlib modules the program imports are built: _ssl/_hashlib
# (OpenSSL), _ctypes (libffi), zlib/binascii (zlib); _bz2, _lzma, _sqlite3, _uuid, readline, curses, dbm and tkinter
# are left out (their libraries are not built, so configure skips them). CPython itself gets its upstream bug and
# security fixes from Debian's patch series (everything from `shutdown-deadlock.diff` on) but none of Debian's
# layout patches (dist-packages, multiarch, disabled ensurepip), so it behaves like a python.org build.
#
# The result goes to ~/.cache/airuntime/portable-python/<target>-<key>/ (AIRUNTIME_PYTHON_CACHE overrides the
# parent folder), where <key> hashes this script, the exact source package versions and the target: a changed
# script or a Debian security update gives a new prefix, an unchanged one is reused at once. It is a local cache:
# CI on a fresh machine builds it (about 8 min on 2 cores; `BUILD_JOBS` sets make's -j).
#
# Also writes <prefix>/toolchain/clang: zig's clang for the same target, which build/build_binary.py gives Nuitka as
# CC so that the program and its launcher have the same compiler and glibc floor.
set -euo pipefail

TARGET=${TARGET:-x86_64-linux-gnu.2.28}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
CACHE=${AIRUNTIME_PYTHON_CACHE:-$HOME/.cache/airuntime/portable-python}
JOBS=${BUILD_JOBS:-$(nproc)}
SOURCES=(python3.11 openssl libffi zlib)
# Debian's python3.11 patches from this one on are upstream fixes (bugs, CVEs); the ones before it change
# install layout and packaging (deb-locations, multiarch, ensurepip disabled, ...) and are not applied.
FIRST_PYTHON_FIX=shutdown-deadlock.diff

log() { echo "portable_python: $*" >&2; }
die() { log "$*"; exit 1; }

case "$TARGET" in
  x86_64-linux-gnu.*) OPENSSL_TARGET=linux-x86_64 ;;
  aarch64-linux-gnu.*) OPENSSL_TARGET=linux-aarch64 ;;
  *) die "unsupported TARGET=$TARGET (x86_64-linux-gnu.2.28 or aarch64-linux-gnu.2.28)" ;;
esac
[ "${TARGET%%-*}" = "$(uname -m)" ] || die "TARGET=$TARGET on a $(uname -m) machine: build natively (no cross build)"

# --- tools -------------------------------------------------------------------------------------------------------
if [ -z "${ZIG:-}" ]; then
  ZIG=$("$PYTHON" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))' 2>/dev/null) \
    || die "no zig: set ZIG, or install the ziglang wheel of requirements.lock into $PYTHON (make venv)"
fi
[ -x "$ZIG" ] || die "zig not executable: $ZIG"

need=()
for tool in make perl patch dpkg-source; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "missing ${need[*]} (Debian: apt-get install make perl patch dpkg-dev)"
  log "apt-get install make perl patch dpkg-dev"
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends make perl patch dpkg-dev >/dev/null
fi

# --- sources: Debian's source packages ----------------------------------------------------------------------------
DEB_SRC_LIST=/etc/apt/sources.list.d/airuntime-deb-src.sources
has_sources() { apt-cache showsrc python3.11 2>/dev/null | grep -c '^Version:' >/dev/null; }  # -c: no SIGPIPE
ensure_deb_src() {
  if has_sources; then return; fi
  [ "$(id -u)" = 0 ] || die "no deb-src entry for Debian's sources: add one (see $DEB_SRC_LIST in this script)"
  . /etc/os-release
  log "adding $DEB_SRC_LIST (deb-src for $VERSION_CODENAME) and running apt-get update"
  cat > "$DEB_SRC_LIST" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $VERSION_CODENAME-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # other apt runs on the machine hold its lock for a while: wait for it (apt >= 2.1 honours this for the lists)
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  has_sources || die "apt-cache showsrc python3.11 finds nothing"
}

DOWNLOADS=$CACHE/sources
mkdir -p "$DOWNLOADS"
# The newest version of a source package whose files can be fetched (a mirror may list a security update whose
# files it does not serve: then the next older one).
fetch_source() {
  local pkg=$1 version
  for version in $(apt-cache showsrc "$pkg" | sed -n 's/^Version: //p' | sort -u -r -V); do
    if [ -f "$DOWNLOADS/${pkg}_${version#*:}.dsc" ]; then echo "$version"; return; fi
    if (cd "$DOWNLOADS" && apt-get source -q --download-only "$pkg=$version" >/dev/null 2>&1); then
      echo "$version"; return
    fi
    log "$pkg $version: files not served by the mirror, trying an older version"
  done
  die "could not download the source of $pkg"
}
ensure_deb_src
declare -A VERSION
for pkg in "${SOURCES[@]}"; do VERSION[$pkg]=$(fetch_source "$pkg"); done

KEY=$( { cat "$0"; echo "$TARGET"; "$ZIG" version; for pkg in "${SOURCES[@]}"; do echo "$pkg ${VERSION[$pkg]}"; done; } \
  | sha256sum | cut -c1-12)
PREFIX=$CACHE/${TARGET}-$KEY
# The compiler Nuitka uses for the program and its onefile launcher: the same zig and target. Named `clang` so
# Nuitka treats it as clang and puts ccache in front (it does not for a compiler named zig); version queries go
# without the target, which zig rejects there. It names this run's zig (same version: the key has it), so a cached
# prefix keeps working after the venv that built it is gone; rewritten only when that path changed, since ccache
# knows the compiler by its modification time.
write_toolchain() {
  local wanted
  wanted=$(printf '#!/bin/sh\ncase " $* " in *" -dumpversion "*|*" --version "*) exec "%s" cc "$@" ;; esac\nexec "%s" cc -target %s "$@"' "$ZIG" "$ZIG" "$TARGET")
  mkdir -p "$PREFIX/toolchain"
  if [ "$(cat "$PREFIX/toolchain/clang" 2>/dev/null)" != "$wanted" ]; then
    printf '%s\n' "$wanted" > "$PREFIX/toolchain/clang.tmp"
    chmod +x "$PREFIX/toolchain/clang.tmp"
    mv -f "$PREFIX/toolchain/clang.tmp" "$PREFIX/toolchain/clang"
  fi
}
if [ -f "$PREFIX/.complete" ]; then
  write_toolchain
  echo "$PREFIX"
  exit 0
fi
started=$(date +%s)
log "building CPython for $TARGET into $PREFIX: $(for p in "${SOURCES[@]}"; do printf '%s %s, ' "$p" "${VERSION[$p]}"; done)zig $("$ZIG" version)"

# --- the compiler: zig's clang for the target, wrapped so every configure sees one plain command ---------------------
WORK=$CACHE/work-$KEY
rm -rf "$WORK" "$PREFIX"
mkdir -p "$WORK/bin" "$PREFIX"
export ZIG_GLOBAL_CACHE_DIR=$CACHE/zig-cache ZIG_LOCAL_CACHE_DIR=$CACHE/zig-cache
for tool in cc c++ ar ranlib; do
  case $tool in
    cc|c++) args="$tool -target $TARGET" ;;
    *) args="$tool" ;;
  esac
  printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$ZIG" "$args" > "$WORK/bin/zig-$tool"
  chmod +x "$WORK/bin/zig-$tool"
done
export CC=$WORK/bin/zig-cc CXX=$WORK/bin/zig-c++ AR=$WORK/bin/zig-ar RANLIB=$WORK/bin/zig-ranlib
# -fPIC: the static libraries end up inside shared extension modules and a PIE executable; zig cc turns on
# UBSan traps in unoptimised code, which configure's test programs must not see
# -Wno-date-time: zig makes __DATE__/__TIME__ an error (reproducible builds); CPython's build info uses them
export CFLAGS="-O2 -fPIC -fno-sanitize=undefined -Wno-date-time" CXXFLAGS="-O2 -fPIC -fno-sanitize=undefined -Wno-date-time"
export CPPFLAGS="-I$PREFIX/include" LDFLAGS="-L$PREFIX/lib"
# only the libraries built here: nothing of the host (zig with a -target never searches /usr/include, /usr/lib)
export PKG_CONFIG_PATH="" PKG_CONFIG_LIBDIR="$PREFIX/lib/pkgconfig"

unpack() {  # unpack PKG with Debian's patches (python3.11: none here, see below) into $WORK/PKG
  local pkg=$1 dsc
  dsc=$DOWNLOADS/${pkg}_${VERSION[$pkg]#*:}.dsc
  if [ "$pkg" = python3.11 ]; then
    dpkg-source -q --skip-patches -x "$dsc" "$WORK/$pkg" >>"$WORK/build.log" 2>&1
    local on=0 patch
    while read -r patch; do
      [ "$patch" = "$FIRST_PYTHON_FIX" ] && on=1
      [ $on = 1 ] && [ -n "$patch" ] || continue
      patch -d "$WORK/$pkg" -p1 -s --no-backup-if-mismatch < "$WORK/$pkg/debian/patches/$patch"
    done < <(grep -v '^#' "$WORK/$pkg/debian/patches/series")
    [ $on = 1 ] || die "python3.11's patch series has no $FIRST_PYTHON_FIX"
  else
    dpkg-source -q -x "$dsc" "$WORK/$pkg" >>"$WORK/build.log" 2>&1
  fi
}

step() { log "$1 ($(( $(date +%s) - started )) s)"; }
in_dir() {  # run a build command in $WORK/$1, its output in $WORK/build.log, shown (the end) if it fails
  local dir=$1
  shift
  echo "== $dir: $*" >> "$WORK/build.log"
  (cd "$WORK/$dir" && "$@") >> "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; die "failed in $dir: $*"; }
}

step "zlib"
unpack zlib
in_dir zlib ./configure --static --prefix="$PREFIX"
in_dir zlib make -j"$JOBS" libz.a
in_dir zlib make install

step "libffi"
unpack libffi
# --disable-exec-static-tramp: libffi 3.4.4's static trampolines do not compile with clang 16+ (zig 0.17)
in_dir libffi ./configure --prefix="$PREFIX" --libdir="$PREFIX/lib" --disable-shared --enable-static --with-pic \
  --disable-docs --disable-multi-os-directory --disable-exec-static-tramp --host="${TARGET%%-*}-linux-gnu"
in_dir libffi make -j"$JOBS"
in_dir libffi make install

step "openssl"
unpack openssl
# OPENSSLDIR /etc/ssl: the CA certificates of Debian, Ubuntu, SUSE and Alpine hosts (elsewhere SSL_CERT_FILE);
# providers built in (no-module), no engines, no legacy provider, no apps
in_dir openssl ./Configure "$OPENSSL_TARGET" --prefix="$PREFIX" --libdir=lib --openssldir=/etc/ssl \
  no-shared no-module no-tests no-engine no-legacy no-ssl3 no-comp $CFLAGS
in_dir openssl make -j"$JOBS" build_libs
in_dir openssl make install_dev

step "CPython"
unpack python3.11
# setup.py adds the build host's /usr/local and multiarch (/usr/include/x86_64-linux-gnu) folders: glibc 2.36
# headers mixed into zig's 2.28 ones; and Debian's CVE-2026-4224 patch makes pyexpat.c include a core header,
# which needs Py_BUILD_CORE_MODULE (upstream sets it in its build files, which Debian's patch does not touch)
"$PYTHON" - "$WORK/python3.11" <<'PATCH'
import pathlib, sys
root = pathlib.Path(sys.argv[1])
edits = {
    "setup.py": [
        ("    def add_multiarch_paths(self):\n", "        return  # airuntime: never the build host's folders\n"),
        ("        if not CROSS_COMPILING:\n            add_dir_to_list(self.compiler.library_dirs, '/usr/local/lib')",
         None),
    ],
    "Modules/pyexpat.c": [("", "#ifndef Py_BUILD_CORE_MODULE\n#  define Py_BUILD_CORE_MODULE 1\n#endif\n")],
    # 3.11.2's getpath realpath() frees the pointer _Py_normpath returns, which points past a leading "./" of a
    # relative symlink target: `./bin/aibrix_runtime -> ../opt/airuntime/airuntime` aborted at start with
    # "munmap_chunk(): invalid pointer". Keep the joined buffer and free that one.
    "Modules/getpath.c": [
        (
            "            path2 = _Py_join_relfile(path, resolved);\n            if (path2) {\n"
            "                path2 = _Py_normpath(path2, -1);\n            }\n",
            "REPLACE",
        ),
    ],
}
GETPATH_FIX = """            wchar_t *joined = _Py_join_relfile(path, resolved);
            path2 = joined ? _PyMem_RawWcsdup(_Py_normpath(joined, -1)) : NULL;
            PyMem_RawFree((void *)joined);
"""
for name, changes in edits.items():
    path = root / name
    text = path.read_text()
    for anchor, added in changes:
        if anchor == "":
            text = added + text
            continue
        if text.count(anchor) != 1:
            sys.exit(f"portable_python: {name}: anchor not found once: {anchor!r}")
        if added == "REPLACE":
            text = text.replace(anchor, GETPATH_FIX)
        elif added is None:  # the /usr/local lines: never
            text = text.replace(anchor, anchor.replace("if not CROSS_COMPILING:", "if False:  # airuntime"))
        else:
            text = text.replace(anchor, anchor + added)
    path.write_text(text)
PATCH
# --export-dynamic: the extension modules in lib-dynload resolve CPython's symbols from the executable
in_dir python3.11 ./configure --prefix="$PREFIX" --disable-shared --with-openssl="$PREFIX" --with-ensurepip=no \
  --disable-test-modules LDFLAGS="$LDFLAGS -Wl,--export-dynamic"
in_dir python3.11 make -j"$JOBS"
in_dir python3.11 make install

# modules the program needs must have been built (configure silently skips a module whose library it misses)
"$PREFIX/bin/python3.11" -c 'import ssl, _ssl, hashlib, _hashlib, ctypes, zlib, _decimal, _asyncio, select, pyexpat
print(ssl.OPENSSL_VERSION, "zlib", zlib.ZLIB_RUNTIME_VERSION)' >&2

write_toolchain
{
  for pkg in "${SOURCES[@]}"; do echo "$pkg ${VERSION[$pkg]}"; done
  echo "zig $("$ZIG" version)"
  echo "target $TARGET"
  echo "build seconds $(( $(date +%s) - started ))"
} > "$PREFIX/BUILD-INFO"
rm -rf "$WORK"
touch "$PREFIX/.complete"
step "done: $PREFIX"
echo "$PREFIX"
