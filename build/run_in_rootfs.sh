#!/usr/bin/env bash
# Run the binary inside ROOTFS (made by build/rootfs.sh) the way a container would: its own mount namespace with
# /proc and the usual /dev nodes, chroot, uid/gid 65532 (nonroot), a clean environment like the image's. The host
# network is shared, so a server in it answers on 127.0.0.1. Needs root (chroot, mount).
#
#   bash build/run_in_rootfs.sh ROOTFS [--] ARGS...        e.g. ... build/out/rootfs -- serve --port 9000
#   ROOTFS_ENV="HOME=/nonexistent LANG=C.UTF-8" bash build/run_in_rootfs.sh ...   extra variables
#   ROOTFS_PROGRAM=/usr/local/bin/aibrix_runtime bash build/run_in_rootfs.sh ...   another name of the program
#   ROOTFS_READONLY=1 bash build/run_in_rootfs.sh ...   the whole root read-only (readOnlyRootFilesystem, no volume)
#
# The program keeps the PID of this script (exec all the way), so signals reach it directly.
set -euo pipefail
ROOTFS=$(cd "${1:?usage: run_in_rootfs.sh ROOTFS [--] ARGS...}" && pwd)
shift
[ "${1:-}" = "--" ] && shift
[ "$(id -u)" = 0 ] || { echo "run_in_rootfs.sh: needs root (chroot, mount)" >&2; exit 1; }
for node in null zero random urandom full tty; do
  [ -e "$ROOTFS/dev/$node" ] || touch "$ROOTFS/dev/$node"
done
mkdir -p "$ROOTFS/dev/shm"
# shellcheck disable=SC2086
exec unshare --mount --propagation private -- bash -c '
  set -e
  R=$1; CHROOT=$2; shift 2
  if [ "${ROOTFS_READONLY:-}" = 1 ]; then mount --bind "$R" "$R" && mount -o remount,bind,ro "$R"; fi
  mount -t proc proc "$R/proc"
  for node in null zero random urandom full tty; do mount --bind "/dev/$node" "$R/dev/$node"; done
  mount -t tmpfs -o mode=1777,size=64m shm "$R/dev/shm"
  exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/nonroot \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt $ROOTFS_ENV \
    "$CHROOT" --userspec=65532:65532 "$R" "${ROOTFS_PROGRAM:-/usr/local/bin/airuntime}" "$@"
' run_in_rootfs "$ROOTFS" "$(command -v chroot)" "$@"
