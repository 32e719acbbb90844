#!/usr/bin/env bash
# Assemble what the image holds: a filesystem like gcr.io/distroless/cc-debian12:nonroot from Debian 12 packages,
# plus the program as the Containerfile installs it.
#
#   bash build/rootfs.sh ROOTFS STANDALONE_DIR   (make rootfs: build/out/rootfs, dist/airuntime.dist)
#
# Distroless cc-debian12 = base (base-files, netbase, tzdata, ca-certificates' bundle, libc6, libssl3, /etc/passwd
# with root, nobody and nonroot 65532, /home/nonroot, /tmp) + libgcc-s1, libgomp1, libstdc++6. The program needs
# nothing of it beyond glibc and libgcc_s (its OpenSSL, libffi and zlib are in its own folder: see
# build/check_portable.py); the C.utf8 locale (from libc-bin, 0.4 MB) is added so that LANG=C.UTF-8, which many
# deployments set, does not make it abort at start (SIGABRT, no message: CPython's locale coercion finds no C.UTF-8).
# The program: the standalone folder, unpacked here as at image build time, in /opt/airuntime (read-only, root's),
# and /usr/local/bin/{airuntime,aibrix_runtime,aibrix_download} as symlinks to its program (it acts on the name it
# is invoked under). Docs, man pages and Debian's package metadata are dropped, as distroless does. Nothing of this
# runs a shell or a package script: the .debs are only unpacked (dpkg-deb -x), and the CA bundle is concatenated
# here as update-ca-certificates would.
#
# Run the binary in it:  bash build/run_in_rootfs.sh ROOTFS -- --version
set -euo pipefail

ROOTFS=${1:?usage: rootfs.sh ROOTFS STANDALONE_DIR}
STANDALONE=${2:?usage: rootfs.sh ROOTFS STANDALONE_DIR}
[ -x "$STANDALONE/airuntime" ] || { echo "rootfs.sh: $STANDALONE/airuntime missing (make binary)" >&2; exit 1; }
DEBS=$(dirname "$ROOTFS")/debs
PACKAGES=(base-files netbase tzdata ca-certificates libc6 libssl3 libgcc-s1 libgomp1 libstdc++6 libc-bin)
# of libc-bin only the C.utf8 locale is kept (the Containerfile copies the same folder from its builder stage)
ONLY_LOCALE=libc-bin

command -v dpkg-deb >/dev/null || { echo "rootfs.sh: needs Debian's dpkg-deb and apt-get" >&2; exit 1; }
mkdir -p "$DEBS"
missing_debs() {
  missing=()
  for pkg in "${PACKAGES[@]}"; do
    compgen -G "$DEBS/${pkg}_*.deb" >/dev/null || missing+=("$pkg")
  done
}
download() {  # apt-get download, without its warning that root downloads unsandboxed
  (cd "$DEBS" && apt-get download -q "$@" 2>&1 >/dev/null | { grep -v -i unsandboxed || true; } >&2)
}
missing_debs
if [ ${#missing[@]} -gt 0 ]; then
  download "${missing[@]}" || true
  missing_debs
  if [ ${#missing[@]} -gt 0 ]; then  # stale or empty package lists
    apt-get update -q >/dev/null
    download "${missing[@]}"
    missing_debs
    [ ${#missing[@]} -eq 0 ] || { echo "rootfs.sh: could not download ${missing[*]}" >&2; exit 1; }
  fi
fi

rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"
for deb in "$DEBS"/*.deb; do
  case "$(basename "$deb")" in
    "${ONLY_LOCALE}"_*)
      scratch=$(mktemp -d)
      dpkg-deb -x "$deb" "$scratch"
      mkdir -p "$ROOTFS/usr/lib/locale"
      cp -a "$scratch/usr/lib/locale/C.utf8" "$ROOTFS/usr/lib/locale/"
      rm -rf "$scratch"
      ;;
    *) dpkg-deb -x "$deb" "$ROOTFS" ;;
  esac
done

cd "$ROOTFS"
# what distroless leaves out
rm -rf usr/share/doc/*/changelog* usr/share/doc/*/NEWS* usr/share/doc/*/README* usr/share/man usr/share/info \
  usr/share/lintian usr/share/locale usr/share/bug usr/share/common-licenses usr/share/gcc usr/share/gdb \
  usr/lib/x86_64-linux-gnu/gconv etc/init.d etc/ld.so.conf.d usr/sbin usr/bin sbin bin var/lib/dpkg usr/share/base-files \
  usr/libexec etc/update-motd.d etc/profile* etc/skel etc/dpkg etc/default
mkdir -p etc/ssl/certs tmp home/nonroot root proc dev sys usr/local/bin var/lib/dpkg/status.d
chmod 1777 tmp
chmod 700 root
# the CA bundle, as update-ca-certificates builds it
find usr/share/ca-certificates -name '*.crt' | LC_ALL=C sort | xargs cat > etc/ssl/certs/ca-certificates.crt
cat > etc/passwd <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > etc/group <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
echo "hosts: files dns" > etc/nsswitch.conf
chown 65532:65532 home/nonroot
chmod 700 home/nonroot
cd - >/dev/null

# the program, as the Containerfile installs it (files root's, read-only for everyone else)
rm -rf "$ROOTFS/opt/airuntime"
mkdir -p "$ROOTFS/opt"
cp -a "$STANDALONE" "$ROOTFS/opt/airuntime"
chown -R 0:0 "$ROOTFS/opt/airuntime"
chmod -R u+rwX,go+rX,go-w "$ROOTFS/opt/airuntime"
for name in airuntime aibrix_runtime aibrix_download; do
  ln -sfn /opt/airuntime/airuntime "$ROOTFS/usr/local/bin/$name"
done
printf '%s\n' "${PACKAGES[@]}" > "$ROOTFS/.packages"
touch "$ROOTFS/.complete"
echo "rootfs.sh: $ROOTFS from ${PACKAGES[*]}: $(du -sm "$ROOTFS" | cut -f1) MB"
