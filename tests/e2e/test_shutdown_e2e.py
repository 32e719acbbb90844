"""SIGTERM with downloads in flight, against the real sidecar process and a throttled HTTP file server.

- A download that can finish inside --shutdown-timeout finishes; the process exits 0 with the file complete.
- One that cannot is checkpointed: the process exits 0 within the timeout, nothing sits under the final name,
  the partial file and its resume record remain, and the next download fetches only the missing bytes.
- A second signal exits at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.sidecar import SidecarProcess, sidecar_process
from tests.support.slow_file_server import SlowFileServer

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


def post(url: str, body: dict[str, Any], timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


@pytest.fixture
def files(tmp_path: Path) -> Path:
    directory = tmp_path / "served"
    directory.mkdir()
    (directory / "small.bin").write_bytes(os.urandom(4 * MIB))
    (directory / "big.bin").write_bytes(os.urandom(12 * MIB))
    return directory


@pytest.fixture
def server(files: Path) -> Iterator[SlowFileServer]:
    with SlowFileServer(files, bytes_per_second=1.5 * MIB) as slow:
        yield slow


def start_download(sidecar: SidecarProcess, source: str, target: Path) -> str:
    status, body = post(
        f"{sidecar.url}/v1/model/download",
        {
            "model_uri": source,
            "model_name": "m",
            "local_dir": str(target),
            "download_extra_config": {"part_chunksize": MIB, "num_threads": 4},
        },
    )
    assert status == 200, body
    return str(body["job_id"])


def wait_for_bytes(sidecar: SidecarProcess, job_id: str, at_least: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = get(f"{sidecar.url}/v1/downloads/{job_id}")
        if job["bytes_done"] >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError(f"download made no progress: {job}")


def stop(sidecar: SidecarProcess, signum: int = signal.SIGTERM, limit: float = 15.0) -> tuple[int, float]:
    started = time.monotonic()
    sidecar.proc.send_signal(signum)
    code = sidecar.proc.wait(timeout=limit)
    return code, time.monotonic() - started


def test_a_download_that_fits_in_the_timeout_finishes(server: SlowFileServer, files: Path, tmp_path: Path) -> None:
    with sidecar_process(["--shutdown-timeout", "10"]) as sidecar:
        job_id = start_download(sidecar, f"{server.url}/small.bin", tmp_path / "out")
        wait_for_bytes(sidecar, job_id, 64 * 1024)
        code, took = stop(sidecar)
        output = sidecar.output()
    assert code == 0, output
    assert took < 10, took
    final = tmp_path / "out" / "m" / "small.bin"
    assert final.read_bytes() == (files / "small.bin").read_bytes()
    assert "waiting for downloads" in output and "stopped" in output


def test_a_download_that_does_not_fit_is_checkpointed_and_resumes(
    server: SlowFileServer, files: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    with sidecar_process(["--shutdown-timeout", "4"]) as sidecar:
        job_id = start_download(sidecar, f"{server.url}/big.bin", target)
        wait_for_bytes(sidecar, job_id, 3 * MIB)
        code, took = stop(sidecar)
        output = sidecar.output()
    assert code == 0, output
    assert took < 4 + 1.0, took
    model = target / "m"
    assert not (model / "big.bin").exists(), "an incomplete file sits under its final name"
    leftovers = [path.name for path in model.rglob("*") if path.is_file()]
    assert any(name.endswith(".json") for name in leftovers), leftovers  # the resume record
    sent_before = server.bytes_sent
    assert sent_before < 12 * MIB

    with sidecar_process([]) as sidecar:
        job_id = start_download(sidecar, f"{server.url}/big.bin", target)
        deadline = time.monotonic() + 60
        while (job := get(f"{sidecar.url}/v1/downloads/{job_id}"))["state"] == "running":
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    assert job["state"] == "completed", job
    data = (model / "big.bin").read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256((files / "big.bin").read_bytes()).digest()
    refetched = server.bytes_sent - sent_before
    assert refetched < 12 * MIB - 2 * MIB, f"resume fetched {refetched} bytes of {12 * MIB}"


def test_a_second_signal_exits_at_once(server: SlowFileServer, tmp_path: Path) -> None:
    with sidecar_process(["--shutdown-timeout", "60"]) as sidecar:
        job_id = start_download(sidecar, f"{server.url}/big.bin", tmp_path / "out")
        wait_for_bytes(sidecar, job_id, MIB)
        sidecar.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert sidecar.proc.poll() is None, "the first signal must drain, not exit"
        with pytest.raises(urllib.error.URLError):  # draining: the listening socket is closed
            urllib.request.urlopen(f"{sidecar.url}/health", timeout=2)
        code, took = stop(sidecar, signal.SIGINT, limit=5)
    assert code == 128 + signal.SIGINT
    assert took < 1.0
    assert not (tmp_path / "out" / "m" / "big.bin").exists()


def test_sigterm_on_an_idle_sidecar_exits_fast() -> None:
    with sidecar_process([]) as sidecar:
        code, took = stop(sidecar)
    assert code == 0 and took < 2.0, (code, took)
