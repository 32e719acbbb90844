"""Configuration read once, from one declaration (runtime/config.py): every setting has its flag and variables,
the DOWNLOADER_* variables are parsed one way for the CLI and the API, and errors name the setting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.config import ServeConfig
from runtime.download.env import DownloaderEnv
from runtime.errors import ConfigError
from runtime.settings import declared_settings
from tests.unit.test_cli import effective_config, run_cli

SAMPLE_VALUES: dict[str, tuple[str, Any]] = {
    # setting -> (text for its flag/variable, value --print-config shows)
    "engine": ("vllm", "vllm"),
    "metrics_prefix": ("kthena", "kthena"),
    "metrics_profile": ("aibrix", "aibrix"),
    "raw_metrics": ("false", False),
    "engine_url": ("http://engine:8001", "http://engine:8001"),
    "engine_metrics_path": ("/m", "/m"),
    "engine_health_path": ("/h", "/h"),
    "engine_api_key": ("sk-config-test-key", "****"),
    "scrape_timeout": ("3.5", 3.5),
    "max_scrape_bytes": ("2048", 2048),
    "host": ("127.0.0.1", "127.0.0.1"),
    "port": ("9123", 9123),
    "pod": ("pod-0.ns", "pod-0.ns"),
    "model": ("tiny", "tiny"),
    "log_level": ("debug", "debug"),
    "log_format": ("json", "json"),
    "models_dir": ("/srv/models", "/srv/models"),
    "adapters_dir": ("/srv/adapters", "/srv/adapters"),
    "lora_reconcile_interval": ("7", 7.0),
    "api_token": ("token-for-config", "****"),
    "protect_metrics": (None, True),  # needs a token: checked in its own test
    "max_request_bytes": ("4096", 4096),
    "shutdown_timeout": ("3", 3.0),
}
SKIPPED = {"metrics_rules", "lora_adapters_file", "api_token_file", "allowed_roots", "protect_metrics"}  # own tests


def test_every_declared_setting_is_in_the_sample_table() -> None:
    """Adding a setting is one declaration plus a line here: this test then checks its flag and its variables."""
    declared = {name for name, _, _ in declared_settings(ServeConfig)}
    assert declared == set(SAMPLE_VALUES) | SKIPPED


@pytest.mark.parametrize("name", sorted(set(SAMPLE_VALUES) - SKIPPED))
def test_each_setting_by_flag_and_by_every_variable(name: str) -> None:
    text, shown = SAMPLE_VALUES[name]
    (setting,) = [declared for field, _, declared in declared_settings(ServeConfig) if field == name]
    flag = next(flag for flag in setting.flags if flag.startswith("--")).split("/")[0]
    args = [flag, text] if setting.kind != "bool" else ([flag] if text == "true" else [f"--no-{flag[2:]}"])
    assert effective_config(args)[name] == shown
    for variable in setting.env:
        assert effective_config([], {variable: text})[name] == shown, variable


def test_downloader_variables_are_parsed_once_with_errors_naming_the_variable() -> None:
    assert DownloaderEnv.read({}) == DownloaderEnv()
    env = DownloaderEnv.read(
        {
            "DOWNLOADER_NUM_THREADS": " 8 ",
            "DOWNLOADER_ALLOW_FILE_SUFFIX": "json, safetensors,,",
            "DOWNLOADER_FORCE_DOWNLOAD": "Yes",
        }
    )
    assert env == DownloaderEnv(num_threads=8, allow_file_suffix=("json", "safetensors"), force_download=True)
    for variables, named in [
        ({"DOWNLOADER_NUM_THREADS": "500"}, "DOWNLOADER_NUM_THREADS='500': must be a whole number from 1 to 256"),
        ({"DOWNLOADER_NUM_THREADS": "four"}, "DOWNLOADER_NUM_THREADS='four'"),
        ({"DOWNLOADER_FORCE_DOWNLOAD": "maybe"}, "DOWNLOADER_FORCE_DOWNLOAD='maybe': must be one of"),
        ({"DOWNLOADER_PART_CHUNKSIZE": "10"}, "DOWNLOADER_PART_CHUNKSIZE='10'"),
    ]:
        with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
            DownloaderEnv.read(variables)


def test_serve_refuses_a_bad_downloader_variable_in_one_line() -> None:
    """Before: an AIBrix request that never sent num_threads got 422 'field num_threads must be ...'."""
    result = run_cli(["serve", "--print-config"], {"DOWNLOADER_NUM_THREADS": "500"})
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "airuntime: error: DOWNLOADER_NUM_THREADS='500': must be a whole number from 1 to 256"
    )
    config = json.loads(run_cli(["serve", "--print-config"], {"DOWNLOADER_NUM_THREADS": "32"}).stdout)
    assert config["downloader"]["num_threads"] == 32


def test_cross_setting_checks() -> None:
    with pytest.raises(ConfigError, match="--protect-metrics needs"):
        ServeConfig(protect_metrics=True).checked()
    with pytest.raises(ConfigError, match="give --api-token or --api-token-file"):
        ServeConfig(api_token="abcdefgh1", api_token_file="/x").checked()
    assert effective_config(["--protect-metrics", "--api-token", "abcdefgh-token"])["protect_metrics"] is True
