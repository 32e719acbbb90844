"""What AIBrix and Kthena users run today, and what airuntime does with each: the README's compatibility table is
generated from these rows, and tests/unit/test_compatibility.py checks every claim against the code (the option
exists, the variable is read, the route is served, the body field is in the OpenAPI description).

A row: (product, kind, what they run, what airuntime does, check). Checks:
    ("option", COMMAND, FLAG)        the click command has the option
    ("program", NAME, COMMAND)       invoked under NAME, the program runs COMMAND
    ("args", [ARGS...], COMMAND)     arguments alone (an image entry point) run COMMAND
    ("setting-env", VARIABLE)        a serve setting reads the variable
    ("downloader-env", VARIABLE)     runtime/download/env.py reads it
    ("credential-env", VARIABLE)     runtime/download/credentials.py falls back to it
    ("route", METHOD, PATH)          the route is served
    ("field", METHOD, PATH, FIELD)   the request body field is described (and so accepted)
    ("config-key", KEY)              a download config key
    ("extra-key", KEY)               an AIBrix download_extra_config key
    ("ignored", VARIABLE)            accepted without effect, for the reason given
"""

from __future__ import annotations

from typing import Any

AIBRIX = "AIBrix 0.8"
KTHENA = "Kthena"

Row = tuple[str, str, str, str, tuple[Any, ...]]

ROWS: list[Row] = [
    # -- how containers are started ----------------------------------------------------------------------------
    (AIBRIX, "manifest", '`command: [aibrix_runtime, --port, "8080"]`',
     "`serve`, with AIBrix's defaults: port 8080, adapters in `/tmp/aibrix/adapters` (the folder AIBrix's webhook "
     "shares with the engine), models in `/tmp/aibrix/models`, AIBrix's metric names (`--metrics-profile aibrix`)",
     ("program", "aibrix_runtime", "serve")),
    (AIBRIX, "manifest", "`command: [aibrix_download, --model-uri, URI, --local-dir, DIR]`",
     "`download` into `DIR/MODEL_NAME` (named as AIBrix names it: `org/name`, or the URI's last segment); the "
     "model path is the last line of the output; exit 0 only when every file is verified",
     ("program", "aibrix_download", "download")),
    (KTHENA, "manifest", '`args: [--port, "8900", --engine, vllm, --engine-base-url, URL, --engine-metrics-path, '
     "/metrics, --pod, $(POD_NAME).$(NAMESPACE), --model, NAME]` (image entry point)",
     "`serve` (arguments that start with an option run `serve`)", ("args", ["--port", "8900"], "serve")),
    (KTHENA, "manifest", "`args: [--source, URI, --output-dir, DIR]` (the downloader init container)",
     "`download` into `DIR` (arguments that name a source run `download`)",
     ("args", ["--source", "org/name", "--output-dir", "/m"], "download")),
    # -- flags -----------------------------------------------------------------------------------------------
    (AIBRIX, "flag", "`aibrix_runtime --host`, `--port`", "the same (default port 8080 under this name)",
     ("option", "serve", ["--host", "--port"])),
    (AIBRIX, "flag", "`aibrix_runtime --enable-fastapi-docs`", "accepted; `/openapi.json` is always served",
     ("option", "serve", "--enable-fastapi-docs")),
    (AIBRIX, "flag", "`aibrix_download --model-uri`, `--local-dir`, `--model-name`", "the same",
     ("option", "download", ["--model-uri", "--local-dir", "--model-name"])),
    (AIBRIX, "flag", "`aibrix_download --download-extra-config JSON`", "the same keys as the API (below)",
     ("option", "download", "--download-extra-config")),
    (AIBRIX, "flag", "`aibrix_download --enable-progress-bar`", "accepted; the progress line shows on a terminal",
     ("option", "download", "--enable-progress-bar")),
    (KTHENA, "flag", "`-E/--engine vllm|sglang|vllmdisaggregated`", "the same (`vllmdisaggregated` is vLLM); "
     "default `auto`", ("option", "serve", ["-E", "--engine"])),
    (KTHENA, "flag", "`-H/--host`, `-P/--port`", "the same (default port 9000)", ("option", "serve", ["-H", "--host", "-P", "--port"])),
    (KTHENA, "flag", "`-B/--engine-base-url`, `-M/--engine-metrics-path`", "the same",
     ("option", "serve", ["-B", "--engine-base-url", "-M", "--engine-metrics-path"])),
    (KTHENA, "flag", "`-I/--pod NAME.NAMESPACE`, `-N/--model NAME`",
     "the same: `sidecar_info` labels, and the owner and model of KV-cache blocks in Redis",
     ("option", "serve", ["-I", "--pod", "-N", "--model"])),
    (KTHENA, "flag", "downloader `-s/--source`, `-o/--output-dir`, `-w/--max-workers`, `-c/--config JSON`",
     "the same", ("option", "download", ["-s", "--source", "-o", "--output-dir", "-w", "--max-workers", "-c", "--config"])),
    # -- variables ---------------------------------------------------------------------------------------------
    (AIBRIX, "variable", "`INFERENCE_ENGINE`", "`--engine` (any engine, not only vllm)",
     ("setting-env", "INFERENCE_ENGINE")),
    (AIBRIX, "variable", "`INFERENCE_ENGINE_ENDPOINT`", "`--engine-url`", ("setting-env", "INFERENCE_ENGINE_ENDPOINT")),
    (AIBRIX, "variable", "`INFERENCE_ENGINE_API_KEY`", "`--engine-api-key`", ("setting-env", "INFERENCE_ENGINE_API_KEY")),
    (AIBRIX, "variable", "`METRIC_SCRAPE_PATH`", "`--engine-metrics-path`", ("setting-env", "METRIC_SCRAPE_PATH")),
    (AIBRIX, "variable", "`INFERENCE_ENGINE_VERSION`",
     "not needed: the version is read from the engine (`engine_info`, `/ready`)", ("ignored", "INFERENCE_ENGINE_VERSION")),
    (AIBRIX, "variable", "`DOWNLOADER_LOCAL_DIR`", "`--models-dir` of `serve`, `--local-dir` of `download`",
     ("setting-env", "DOWNLOADER_LOCAL_DIR")),
    (AIBRIX, "variable", "`DOWNLOADER_NUM_THREADS`", "parallel transfers (1-256; a bad value is a start error naming it)",
     ("downloader-env", "DOWNLOADER_NUM_THREADS")),
    (AIBRIX, "variable", "`DOWNLOADER_ALLOW_FILE_SUFFIX`", "only files with these suffixes",
     ("downloader-env", "DOWNLOADER_ALLOW_FILE_SUFFIX")),
    (AIBRIX, "variable", "`DOWNLOADER_FORCE_DOWNLOAD`", "fetch everything again", ("downloader-env", "DOWNLOADER_FORCE_DOWNLOAD")),
    (AIBRIX, "variable", "`DOWNLOADER_PART_CHUNKSIZE`", "the ranged part size", ("downloader-env", "DOWNLOADER_PART_CHUNKSIZE")),
    (AIBRIX, "variable", "`DOWNLOADER_FORCE_DOWNLOAD` other than `1 true yes on 0 false no off`", "a start error "
     "naming it (AIBrix reads any other word as false)", ("downloader-env", "DOWNLOADER_FORCE_DOWNLOAD")),
    (AIBRIX, "variable", "`DOWNLOADER_PART_THRESHOLD`, `DOWNLOADER_S3_MAX_IO_QUEUE`, `DOWNLOADER_S3_IO_CHUNKSIZE`",
     "no effect: boto3 tuning; airuntime's transfer engine paces itself", ("ignored", "DOWNLOADER_PART_THRESHOLD")),
    (AIBRIX, "variable", "`DOWNLOADER_CHECK_FILE_EXIST`", "no effect: finished files are always skipped through the "
     "manifest, and checked against their checksum when changed on disk", ("ignored", "DOWNLOADER_CHECK_FILE_EXIST")),
    (AIBRIX, "variable", "`HF_TOKEN`, `HF_ENDPOINT`, `HF_REVISION`", "the same", ("credential-env", ["HF_TOKEN", "HF_ENDPOINT", "HF_REVISION"])),
    (AIBRIX, "variable", "`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`",
     "the same (and the default AWS chain when no keys are set)",
     ("credential-env", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"])),
    (AIBRIX, "variable", "`TOS_ACCESS_KEY`, `TOS_SECRET_KEY`, `TOS_ENDPOINT`, `TOS_REGION`", "the same",
     ("credential-env", ["TOS_ACCESS_KEY", "TOS_SECRET_KEY", "TOS_ENDPOINT", "TOS_REGION"])),
    (AIBRIX, "variable", "`DOWNLOADER_TOS_VERSION`, `TOS_ENABLE_CRC`", "no effect: TOS is read over its S3 protocol, "
     "every file is verified (size, and MD5 where the ETag is one)", ("ignored", "DOWNLOADER_TOS_VERSION")),
    (AIBRIX, "variable", "`LOG_LEVEL`, `LOG_PATH`, `LOG_FORMAT`", "no effect: `--log-level`, `--log-format`; logs go to "
     "stderr, never to a file", ("ignored", "LOG_PATH")),
    (AIBRIX, "variable", "`METRICS_ENABLE_TRANSFORMATION`, `METRICS_RAW_PASSTHROUGH_MODE`", "no effect: "
     "`--no-raw-metrics`, `--metrics-profile`; the engine's families always pass through unless asked otherwise",
     ("ignored", "METRICS_RAW_PASSTHROUGH_MODE")),
    (AIBRIX, "variable", "`PROMETHEUS_MULTIPROC_DIR`", "no effect: one process, nothing written (AIBrix empties that "
     "folder at start)", ("ignored", "PROMETHEUS_MULTIPROC_DIR")),
    (KTHENA, "variable", "`ACCESS_KEY`, `SECRET_KEY`, `ENDPOINT`", "object-store credentials and endpoint",
     ("credential-env", ["ACCESS_KEY", "SECRET_KEY", "ENDPOINT"])),
    (KTHENA, "variable", "`HF_AUTH_TOKEN`, `HF_ENDPOINT`, `HF_REVISION`", "the same", ("credential-env", ["HF_AUTH_TOKEN", "HF_ENDPOINT", "HF_REVISION"])),
    (KTHENA, "variable", "`MS_TOKEN`, `MS_REVISION` (ModelScope)", "the same; then the SDK's `MODELSCOPE_API_TOKEN`, "
     "`MODELSCOPE_ENDPOINT`, `MODELSCOPE_DOMAIN`",
     ("credential-env", ["MS_TOKEN", "MS_REVISION", "MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"])),
    (KTHENA, "variable", "`REQUEST_TIMEOUT`", "no effect: engine calls have their own bounds (`--scrape-timeout`, "
     "300 s for adapter loads)", ("ignored", "REQUEST_TIMEOUT")),
    # -- endpoints and bodies ---------------------------------------------------------------------------------
    (AIBRIX, "endpoint", "`GET /healthz`, `GET /ready`", "the same; `/ready` also asks the engine's health",
     ("route", "GET", "/healthz")),
    (AIBRIX, "endpoint", "`GET /metrics/` (and `/metrics`)", "the engine's families and AIBrix's names under "
     "`aibrix_runtime`", ("route", "GET", "/metrics/")),
    (AIBRIX, "endpoint", "`GET /v1/models`", "the engine's list, through the sidecar (AIBrix's controller asks here)",
     ("route", "GET", "/v1/models")),
    (AIBRIX, "endpoint", "`POST /v1/lora_adapter/load` `{lora_name, lora_path}`", "load; `lora_path` may also be a "
     "Hugging Face repo id or any source, downloaded first", ("field", "POST", "/v1/lora_adapter/load", "lora_path")),
    (AIBRIX, "body field", "`artifact_url`, `credentials`, `credentials_secret`, `additional_config`, `local_dir`",
     "AIBrix's controller in sidecar mode: download the artifact (s3, gcs, tos, huggingface, http(s)) then load",
     ("field", "POST", "/v1/lora_adapter/load", ["artifact_url", "credentials", "credentials_secret",
                                                  "additional_config", "local_dir"])),
    (AIBRIX, "endpoint", "`POST /v1/lora_adapter/unload` `{lora_name, cleanup_local}`",
     "unload (200 when the engine no longer has it, as AIBrix), then remove the downloaded files",
     ("field", "POST", "/v1/lora_adapter/unload", "cleanup_local")),
    (AIBRIX, "body field", "`lora_int_id`", "the engine's answer passes through",
     ("field", "POST", "/v1/lora_adapter/unload", "lora_int_id")),
    (AIBRIX, "endpoint", "`POST /v1/model/download` `{model_uri, local_dir, model_name, download_extra_config}`",
     "download in the background into `LOCAL_DIR/MODEL_NAME`; the answer as AIBrix's, plus a job id",
     ("field", "POST", "/v1/model/download", "download_extra_config")),
    (AIBRIX, "body field", "`download_extra_config`: `ak sk endpoint region hf_endpoint hf_token hf_revision "
     "num_threads part_chunksize allow_file_suffix force_download`", "mapped onto ours (one mapping for the CLI and "
     "the API); an unknown key is a 422 naming it", ("extra-key", ["ak", "sk", "endpoint", "region", "hf_endpoint", "hf_token",
     "hf_revision", "num_threads", "part_chunksize", "allow_file_suffix", "force_download"])),
    (AIBRIX, "body field", "`download_extra_config`: `max_io_queue io_chunksize part_threshold`",
     "checked, no effect (boto3 tuning)", ("extra-key", ["max_io_queue", "io_chunksize", "part_threshold"])),
    (AIBRIX, "endpoint", "`GET /v1/model/list` with a JSON body `{local_dir}`", "the models downloaded under it "
     "(the body, or `?local_dir=`)", ("route", "GET", "/v1/model/list")),
    (AIBRIX, "endpoint", "`POST /v1/runtime/models/*`, `GET /v1/runtime/*` (ModelClaim engine lifecycle)",
     "not provided (404): airuntime does not launch engines", ("ignored", "/v1/runtime")),
    (KTHENA, "endpoint", "`GET /health`", "200 while the sidecar runs", ("route", "GET", "/health")),
    (KTHENA, "endpoint", "`GET /metrics`", "the engine's families and the unified ones (`--metrics-prefix kthena` "
     "for Kthena's names)", ("route", "GET", "/metrics")),
    (KTHENA, "endpoint", "`POST /v1/download_model` `{source, output_dir, config, max_workers, async_download}`",
     "the same (`config` as an object too, which Kthena answers with a 500)",
     ("field", "POST", "/v1/download_model", "async_download")),
    (KTHENA, "body field", "`config`: `hf_token hf_endpoint hf_revision access_key secret_key endpoint`",
     "the same", ("config-key", ["hf_token", "hf_endpoint", "hf_revision", "access_key", "secret_key", "endpoint"])),
    (KTHENA, "body field", "`source`: `ms://NAMESPACE/REPO`, with `config`: `ms_token ms_revision`",
     "downloaded from ModelScope over plain HTTP (also `modelscope://owner/name[:revision]`, KServe's form)",
     ("config-key", ["ms_token", "ms_revision"])),
    (KTHENA, "endpoint", "`POST /v1/load_lora_adapter` `{lora_name, source, output_dir, config, max_workers, "
     "async_download}`", "download then load; `lora_path` (which Kthena ignores) loads from disk",
     ("field", "POST", "/v1/load_lora_adapter", "source")),
    (KTHENA, "endpoint", "`POST /v1/unload_lora_adapter` `{lora_name}`", "unload; the engine's 404 passes through",
     ("route", "POST", "/v1/unload_lora_adapter")),
]  # fmt: skip


def markdown() -> str:
    lines = ["| product | kind | what its users run | what airuntime does |", "|---|---|---|---|"]
    for product, kind, theirs, ours, _ in ROWS:
        lines.append(f"| {product} | {kind} | {theirs} | {ours} |")
    return "\n".join(lines) + "\n"
