#!/usr/bin/env bash
# Build the container image from Containerfile with the first engine that can build here: docker (a reachable
# daemon), podman, buildah. Otherwise say why none can and exit 2 (`make rootfs` assembles the same filesystem
# from Debian packages without any engine, and tests/binary runs the binary in it).
#
#   bash build/image.sh [IMAGE]          (make image IMAGE=airuntime:dev)
#
# The build context is a small folder with only what the Containerfile copies (not .venv, dist, build/out).
set -euo pipefail
IMAGE=${1:-airuntime:dev}
REPO=$(cd "$(dirname "$0")/.." && pwd)
COMMIT=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
CONTEXT="$REPO/build/out/image-context"

rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/build"
cp -r "$REPO/Containerfile" "$REPO/pyproject.toml" "$REPO/requirements.lock" "$REPO/runtime" "$CONTEXT/"
cp "$REPO/README.md" "$CONTEXT/" 2>/dev/null || echo "# airuntime" > "$CONTEXT/README.md"
cp "$REPO/build/build_binary.py" "$REPO/build/onefile_patch.py" "$REPO/build/entry.py" "$REPO/build/nuitka_strip_plugin.py" \
  "$REPO/build/portable_python.sh" "$REPO/build/check_portable.py" "$CONTEXT/build/"
find "$CONTEXT" -name __pycache__ -prune -exec rm -rf {} +
rm -f "$CONTEXT/runtime/_build_stamp.py"

reasons=()
build_with() {
  echo "image.sh: building $IMAGE with $1 (commit $COMMIT)"
  "$@" -f "$CONTEXT/Containerfile" --build-arg "AIRUNTIME_COMMIT=$COMMIT" -t "$IMAGE" "$CONTEXT"
  echo "image.sh: built $IMAGE"
  exit 0
}
if command -v docker >/dev/null; then
  if docker info >/dev/null 2>&1; then build_with docker build; fi
  reasons+=("docker: client installed, but no daemon answers ($(docker info 2>&1 | grep -m1 -i -E 'cannot|error' || true))")
else
  reasons+=("docker: not installed")
fi
if command -v podman >/dev/null; then
  if podman info >/dev/null 2>&1; then build_with podman build; fi
  reasons+=("podman: installed, but 'podman info' fails")
else
  reasons+=("podman: not installed")
fi
if command -v buildah >/dev/null; then
  if buildah info >/dev/null 2>&1; then build_with buildah bud ${BUILDAH_ARGS:-}; fi
  reasons+=("buildah: installed, but 'buildah info' fails")
else
  reasons+=("buildah: not installed (Debian: apt-get install buildah)")
fi
echo "image.sh: no container engine can build $IMAGE here:" >&2
printf '  - %s\n' "${reasons[@]}" >&2
echo "  (the base images also need a registry; 'make rootfs' builds the same filesystem from Debian packages)" >&2
exit 2
