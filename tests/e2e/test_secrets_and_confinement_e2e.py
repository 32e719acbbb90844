"""Secrets never come back, and nothing is written outside the configured directories: the real sidecar process
(debug logs, JSON format) with every kind of secret configured, driven through success and failure paths.

- Every response body and header, and every log line, is grepped for every test secret.
- Every log line is one JSON object (`--log-format json`); `/metrics` and probes write no log line.
- HOME, TMPDIR, XDG_CACHE_HOME and the working directory are empty folders of the test; after `--help`, a serve
  session with downloads (good and failing) and a CLI download, only --models-dir / --adapters-dir / the download
  targets hold files (and XDG_CACHE_HOME, where the one-file binary unpacks itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.hub_emulator import HubEmulator
from tests.support import secrets
from tests.support.fake_engine import MINIMAL_VLLM_PAYLOAD, FakeEngine
from tests.support.sidecar import REPO_ROOT, free_port, sidecar_command, sidecar_process

pytestmark = pytest.mark.e2e

SECRETS = (secrets.API_TOKEN, secrets.ENGINE_API_KEY, secrets.S3_SECRET_KEY, secrets.HF_TOKEN, secrets.URL_PASSWORD)


class Recorder:
    """Sends requests and keeps every answer (status, headers, body) for the final grep."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[str] = []

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = secrets.API_TOKEN
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, raw, head = response.status, response.read(), str(response.headers)
        except urllib.error.HTTPError as exc:
            status, raw, head = exc.code, exc.read(), str(exc.headers)
        self.answers.append(f"HTTP {status}\n{head}\n{raw.decode(errors='replace')}")  # the answer only
        return status, raw


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    names = ("home", "tmp", "xdg", "cwd", "models", "adapters", "targets")
    folders = {name: tmp_path / name for name in names}
    for folder in folders.values():
        folder.mkdir()
    source = tmp_path / "volume" / "model"
    source.mkdir(parents=True)
    (source / "config.json").write_text('{"hidden_size": 8}')
    (source / "weights.bin").write_bytes(os.urandom(256 * 1024))
    folders["source"] = source
    return folders


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    with HubEmulator() as emulator:
        files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(64 * 1024)}
        emulator.add_repo("org/tiny", files, token=secrets.HF_TOKEN)  # private: the token must be sent
        yield emulator


def confined_env(world: dict[str, Path]) -> dict[str, str]:
    return {
        "HOME": str(world["home"]),
        "TMPDIR": str(world["tmp"]),
        "XDG_CACHE_HOME": str(world["xdg"]),
        "PYTHONDONTWRITEBYTECODE": "1",  # the interpreter's own cache when run from source, not the sidecar's
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def tmp_snapshot() -> set[str]:
    return set(os.listdir("/tmp"))


def test_no_secret_in_any_answer_or_log_and_no_stray_file(world: dict[str, Path], hub: HubEmulator) -> None:
    env = confined_env(world)
    tmp_before = tmp_snapshot()
    for args in (["--help"], ["serve", "--help"], ["download", "--help"], ["--version"]):
        result = subprocess.run(
            [*sidecar_command(), *args], env={**os.environ, **env}, cwd=world["cwd"], capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr

    with FakeEngine(MINIMAL_VLLM_PAYLOAD) as engine:
        with_password = engine.url.replace("http://", f"http://user:{secrets.URL_PASSWORD}@")
        both = subprocess.run(
            [*sidecar_command(), "serve", "--engine-url", with_password, "--engine-api-key", secrets.ENGINE_API_KEY],
            env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}, cwd=world["cwd"], capture_output=True, timeout=60,
        )  # fmt: skip
        assert both.returncode == 2 and b"give only one" in both.stderr
        assert secrets.URL_PASSWORD.encode() not in both.stdout + both.stderr
        with sidecar_process(["--engine", "vllm", "--engine-url", with_password], env=env) as basic_auth:
            ready = urllib.request.urlopen(basic_auth.url + "/ready", timeout=10)
            assert ready.status == 200 and secrets.URL_PASSWORD.encode() not in ready.read()
            assert secrets.URL_PASSWORD not in basic_auth.output()
        engine_url = engine.url
        args = [
            "--engine", "vllm", "--engine-url", engine_url, "--engine-api-key", secrets.ENGINE_API_KEY,
            "--api-token", secrets.API_TOKEN, "--log-level", "debug", "--log-format", "json",
            "--models-dir", str(world["models"]), "--adapters-dir", str(world["adapters"]),
        ]  # fmt: skip
        with sidecar_process(args, env=env) as sidecar:
            calls = Recorder(sidecar.url)
            for path in ("/metrics", "/health", "/ready", "/metrics", "/healthz", "/readyz"):
                assert calls.call("GET", path, token=None)[0] == 200, path
            lines_after_probes = len(sidecar.output().splitlines())
            assert calls.call("GET", "/openapi.json", token=None)[0] == 200

            # refused callers: no token, a wrong one, the token in the wrong place
            assert calls.call("GET", "/v1/downloads", token=None)[0] == 401
            assert calls.call("GET", "/v1/downloads", token=secrets.API_TOKEN[::-1])[0] == 401
            assert calls.call("GET", f"/v1/downloads?token={secrets.API_TOKEN}", token=None)[0] == 401

            # downloads that work, with secrets in their config
            good = {
                "source": f"pvc://{world['source']}",
                "output_dir": str(world["targets"] / "volume"),
                "config": {"secret_key": secrets.S3_SECRET_KEY},
            }
            assert calls.call("POST", "/v1/download_model", good)[0] == 200
            hf = {
                "source": "org/tiny",
                "output_dir": "tiny",  # relative: under --models-dir
                "config": json.dumps({"hf_endpoint": hub.endpoint, "hf_token": secrets.HF_TOKEN}),
            }
            assert calls.call("POST", "/v1/download_model", hf)[0] == 200
            # and ones that fail with secrets all over their config
            dead = f"http://127.0.0.1:{free_port()}"
            for source, config in (
                (
                    "s3://bucket/model",
                    {"endpoint": dead, "access_key": "AKIATEST", "secret_key": secrets.S3_SECRET_KEY},
                ),
                ("tos://bucket/model", {"endpoint": dead, "ak": "AK", "sk": secrets.S3_SECRET_KEY}),
                ("org/missing", {"hf_endpoint": hub.endpoint, "hf_token": secrets.HF_TOKEN}),
                ("org/tiny", {"hf_endpoint": dead, "hf_token": secrets.HF_TOKEN}),
                (f"https://user:{secrets.URL_PASSWORD}@127.0.0.1:1/m.bin?sig={secrets.S3_SECRET_KEY}", {}),
            ):
                body = {"source": source, "output_dir": str(world["targets"] / "failed"), "config": config}
                status, _ = calls.call("POST", "/v1/download_model", body)
                assert 400 <= status < 600, source
            aibrix = {
                "model_uri": "s3://bucket/model",
                "local_dir": str(world["targets"]),
                "download_extra_config": {"endpoint": dead, "ak": "AK", "sk": secrets.S3_SECRET_KEY},
            }
            calls.call("POST", "/v1/model/download", aibrix)
            calls.call("POST", "/v1/load_lora_adapter", {
                "lora_name": "a", "source": "s3://bucket/adapter",
                "config": {"endpoint": dead, "secret_key": secrets.S3_SECRET_KEY},
            })  # fmt: skip
            deadline = time.monotonic() + 60
            while b'"running"' in calls.call("GET", "/v1/downloads")[1]:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            calls.call("GET", "/v1/model/list")
            calls.call("GET", "/v1/lora_adapters")
            for path in ("/metrics", "/ready"):
                calls.call("GET", path, token=None)
            engine.set_mode("error500")
            calls.call("GET", "/metrics", token=None)
            calls.call("GET", "/ready", token=None)
            output = sidecar.output()

        cli = subprocess.run(
            [*sidecar_command(), "download", "s3://bucket/model", "--local-dir", str(world["targets"] / "cli")],
            env={**os.environ, **env, "AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "AK",
                 "AWS_SECRET_ACCESS_KEY": secrets.S3_SECRET_KEY, "HF_TOKEN": secrets.HF_TOKEN,
                 "PYTHONPATH": str(REPO_ROOT)},
            cwd=world["cwd"], capture_output=True, timeout=120,
        )  # fmt: skip
        assert cli.returncode != 0
        cli_output = (cli.stdout + cli.stderr).decode(errors="replace")
        assert len(cli.stderr.decode().strip().splitlines()) == 1, cli.stderr

    # 1. no secret anywhere
    for text in [*calls.answers, output, cli_output]:
        leaked = [secret for secret in SECRETS if secret in text]
        assert not leaked, f"secret {leaked[0][:6]}… in:\n{text[:2000]}"

    # 2. logs: one JSON object per line; probes and scrapes did not log
    lines = output.splitlines()
    assert lines, "the sidecar logged nothing"
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(entry), line
    probe_lines = [json.loads(line) for line in lines[:lines_after_probes]]
    assert not [entry for entry in probe_lines if entry["logger"] == "airuntime.access"]
    access = [json.loads(line) for line in lines if '"airuntime.access"' in line]
    assert access and all(entry["path"].startswith(("/v1/", "/openapi.json")) for entry in access)
    assert not any("token=" in entry["msg"] for entry in access)

    # 3. files only where they were asked for
    assert files_under(world["home"]) == []
    assert files_under(world["tmp"]) == []
    assert files_under(world["cwd"]) == []
    if not os.environ.get("AIRUNTIME_BIN"):
        assert files_under(world["xdg"]) == []
    assert (world["targets"] / "volume" / "config.json").is_file()
    assert (world["models"] / "tiny" / "config.json").is_file()
    assert not (world["targets"] / "failed").exists() or not [
        path for path in (world["targets"] / "failed").rglob("*") if path.is_file() and ".airuntime" not in path.parts
    ]
    assert tmp_snapshot() - tmp_before == set(), "new entries in /tmp"
