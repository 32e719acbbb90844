"""A real Prometheus server for end-to-end tests (Debian package `prometheus`): started on a free 127.0.0.1 port
with a given configuration, queried through its HTTP API, stopped at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.promtool import require_tool
from tests.support.sidecar import free_port, wait_http_ok


def prometheus_path() -> str | None:
    """Path of the `prometheus` server binary (env PROMETHEUS overrides PATH), or None."""
    explicit = os.environ.get("PROMETHEUS")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("prometheus")


@dataclass
class Prometheus:
    url: str
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant-query result vector: [{"metric": {...}, "value": [ts, "str"]}, ...]."""
        data = self.api("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_range(self, promql: str, start: float, end: float, step: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query_range", query=promql, start=f"{start:.3f}", end=f"{end:.3f}", step=step)
        return list(data["result"])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextmanager
def running_prometheus(workdir: Path, config: str) -> Iterator[Prometheus]:
    """Write `config` as prometheus.yml in `workdir`, start Prometheus on a free port, wait until it is ready."""
    binary = require_tool("prometheus", prometheus_path())
    config_path = workdir / "prometheus.yml"
    config_path.write_text(config)
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:
        try:
            wait_http_ok(f"{prometheus.url}/-/ready", timeout=30, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"prometheus did not become ready: {exc}\n{prometheus.log_tail()}")
        yield prometheus
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
