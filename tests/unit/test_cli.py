"""The command line: precedence of flags and variables, competitor aliases, one-line errors, `metrics rewrite`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import secrets
from tests.support.sidecar import REPO_ROOT, sidecar_command

CLEAN_ENV_PREFIXES = ("AIRUNTIME_", "INFERENCE_ENGINE", "METRIC_SCRAPE_PATH")


def run_cli(
    args: list[str], env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_ENV_PREFIXES)}
    base.setdefault("PYTHONPATH", str(REPO_ROOT))
    base.update(env or {})
    result = subprocess.run(
        [*sidecar_command(), *args], input=stdin, env=base, cwd=REPO_ROOT, capture_output=True, timeout=60
    )
    secrets.keep_output(f"airuntime {' '.join(args)[:200]}", (result.stdout + result.stderr).decode(errors="replace"))
    return result


def effective_config(args: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    result = run_cli(["serve", *args, "--print-config"], env)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_defaults() -> None:
    config = effective_config([])
    assert config["engine"] == "auto"
    assert config["engine_url"] == "http://localhost:8000"
    assert config["engine_metrics_path"] is None  # the engine table's: /metrics, trtllm-serve /prometheus/metrics
    assert config["port"] == 9000 and config["host"] == "0.0.0.0"
    assert config["raw_metrics"] is True and config["scrape_timeout"] == 2.0


def test_precedence_flag_over_our_env_over_compat_env_over_default() -> None:
    compat = {"INFERENCE_ENGINE": "sglang", "INFERENCE_ENGINE_ENDPOINT": "http://compat:1", "METRIC_SCRAPE_PATH": "/c"}
    assert effective_config([], compat)["engine"] == "sglang"
    assert effective_config([], compat)["engine_url"] == "http://compat:1"
    assert effective_config([], compat)["engine_metrics_path"] == "/c"
    ours = {**compat, "AIRUNTIME_ENGINE": "vllm", "AIRUNTIME_ENGINE_URL": "http://ours:2"}
    assert effective_config([], ours)["engine"] == "vllm"
    assert effective_config([], ours)["engine_url"] == "http://ours:2"
    flagged = effective_config(["--engine", "sglang", "--engine-url", "http://flag:3"], ours)
    assert flagged["engine"] == "sglang" and flagged["engine_url"] == "http://flag:3"


def test_kthena_short_flags() -> None:
    config = effective_config(
        [
            "-E",
            "sglang",
            "-B",
            "http://127.0.0.1:30000",
            "-M",
            "/m",
            "-H",
            "127.0.0.1",
            "-P",
            "9100",
            "-I",
            "p",
            "-N",
            "m",
        ]
    )
    assert (config["engine"], config["engine_url"], config["engine_metrics_path"]) == (
        "sglang",
        "http://127.0.0.1:30000",
        "/m",
    )
    assert (config["host"], config["port"], config["pod"], config["model"]) == ("127.0.0.1", 9100, "p", "m")
    assert effective_config(["--engine-base-url", "http://x:1"])["engine_url"] == "http://x:1"


def test_api_key_is_masked_everywhere() -> None:
    result = run_cli(["serve", "--print-config"], {"INFERENCE_ENGINE_API_KEY": "sk-very-secret-value"})
    assert result.returncode == 0
    assert b"sk-very-secret-value" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["engine_api_key"] == "****"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["serve", "--engine", "nope"], {}, "'nope' is not one of"),
        (["serve"], {"INFERENCE_ENGINE": "tensorflow"}, "'tensorflow' is not one of"),
        (["serve", "--engine-url", "ftp://x"], {}, "must look like http://HOST:PORT"),
        (["serve", "--port", "99999"], {}, "99999 is not in the range"),
        (["serve", "--metrics-prefix", "bad-prefix"], {}, "must match"),
        (["serve", "--metrics-rules", "/does/not/exist.json"], {}, "cannot read rules file"),
        (["serve", "--scrape-timeout", "abc"], {}, "is not a valid float"),
        (["metrics", "rewrite", "--engine", "nope"], {}, "'nope' is not one of"),
        (["nonsense"], {}, "No such command"),
    ],
)
def test_bad_input_is_one_readable_line(args: list[str], env: dict[str, str], expected: str) -> None:
    result = run_cli([*args, "--print-config"] if args[0] == "serve" else args, env)
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("airuntime: error: ") and expected in lines[0]
    assert b"Traceback" not in result.stderr


def test_bad_rules_file_names_the_problem(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("families:\n  - name: x\n    type: gauge\n")
    result = run_cli(["metrics", "rewrite", "--metrics-rules", str(rules)])
    assert result.returncode == 2
    assert result.stderr.decode().strip() == f"airuntime: error: rules file {rules}: families[0]: missing 'sources'"
    rules.write_text("families: [unclosed")
    result = run_cli(["metrics", "rewrite", "--metrics-rules", str(rules)])
    assert result.returncode == 2 and b"is not valid .yaml" in result.stderr


def test_bind_failure_is_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"])
    assert result.returncode == 1
    assert (
        result.stderr.decode()
        .strip()
        .splitlines()[-1]
        .startswith(f"airuntime: error: cannot listen on 127.0.0.1:{port}")
    )


def test_metrics_rewrite_streams_stdin_to_stdout(tmp_path: Path) -> None:
    payload = b'# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{engine="0"} 5\nnot valid\n'
    result = run_cli(["metrics", "rewrite", "--engine", "vllm", "--metrics-prefix", "kthena"], stdin=payload)
    assert result.returncode == 0
    assert b'kthena:generation_tokens_total{engine="0"} 5\n' in result.stdout
    assert result.stderr.decode().strip() == "airuntime: dropped 1 invalid line(s)"
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"drop": ["generation_tokens_total"]}))
    result = run_cli(["metrics", "rewrite", "--metrics-rules", str(rules), "--no-raw-metrics"], stdin=payload)
    assert result.returncode == 0 and result.stdout == b""


def test_version() -> None:
    result = run_cli(["--version"])
    assert result.returncode == 0 and result.stdout.startswith(b"airuntime ")
    assert b"commit: " in result.stdout and b"python: " in result.stdout


def run_program(
    name: str, args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The program invoked under another name (a link to the binary, or the package's console script)."""
    from tests.support.sidecar import program_command

    base = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_ENV_PREFIXES)}
    base.setdefault("PYTHONPATH", str(REPO_ROOT))
    base.update(env or {})
    command = program_command(name, tmp_path)
    result = subprocess.run([*command, *args], env=base, cwd=REPO_ROOT, capture_output=True, timeout=60)
    secrets.keep_output(f"{name} {' '.join(args)[:200]}", (result.stdout + result.stderr).decode(errors="replace"))
    return result


def test_kthena_runtime_args_alone_run_serve() -> None:
    """Kthena's manifests pass only arguments to the image's entry point: `--port "8900" --engine vllm ...`."""
    result = run_cli(
        ["--port", "8900", "--engine", "vllm", "--engine-base-url", "http://localhost:8000", "--engine-metrics-path",
         "/metrics", "--pod", "runtime-0.default", "--model", "test-model", "--print-config"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    config = json.loads(result.stdout)
    assert (config["port"], config["engine"], config["pod"], config["model"]) == (
        8900,
        "vllm",
        "runtime-0.default",
        "test-model",
    )
    assert effective_config(["--engine", "vllmdisaggregated"])["engine"] == "vllm"  # Kthena's PD backend type


def test_kthena_downloader_args_alone_run_download(tmp_path: Path) -> None:
    """Kthena's controller runs the downloader image with `--source URI --output-dir DIR`: files land in DIR."""
    source = tmp_path / "volume"
    source.mkdir()
    (source / "config.json").write_text("{}")
    result = run_cli(["--source", f"pvc://{source}", "--output-dir", str(tmp_path / "out"), "-w", "2", "-c", "{}"])
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
    result = run_cli(["-s", f"pvc://{source}", "-o", str(tmp_path / "short")])
    assert result.returncode == 0 and (tmp_path / "short" / "config.json").exists()


def test_aibrix_runtime_name_has_aibrix_defaults(tmp_path: Path) -> None:
    """`command: [aibrix_runtime, --port, "8080"]`: AIBrix's port, adapters folder (shared with the engine), models
    folder and metric names; flags and our variables still win; AIBrix's --enable-fastapi-docs is accepted."""
    result = run_program("aibrix_runtime", ["--print-config", "--enable-fastapi-docs"], tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    config = json.loads(result.stdout)
    assert config["port"] == 8080 and config["metrics_profile"] == "aibrix"
    assert (config["adapters_dir"], config["models_dir"]) == ("/tmp/aibrix/adapters", "/tmp/aibrix/models")
    env = {"AIRUNTIME_ADAPTERS_DIR": "/srv/adapters", "INFERENCE_ENGINE": "vllm"}
    config = json.loads(run_program("aibrix_runtime", ["--port", "8081", "--print-config"], tmp_path, env).stdout)
    assert (config["port"], config["adapters_dir"], config["engine"]) == (8081, "/srv/adapters", "vllm")


def test_aibrix_download_name_lands_in_local_dir_slash_model_name_and_prints_it(tmp_path: Path) -> None:
    source = tmp_path / "bucket" / "llama"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    result = run_program(
        "aibrix_download", ["--model-uri", f"pvc://{source}", "--local-dir", str(tmp_path / "models")], tmp_path
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip().splitlines()[-1] == str(tmp_path / "models" / "llama")
    assert (tmp_path / "models" / "llama" / "config.json").exists()
