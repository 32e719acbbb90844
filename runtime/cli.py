"""The `airuntime` command line: `serve` and `metrics rewrite`, with the flags of AIBrix and Kthena as aliases.

Every setting reads, in order: its flag, our `AIRUNTIME_*` variable, the competitor's variable, the default.
Bad input ends with one readable line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

from runtime import __version__
from runtime.config import (
    ConfigError,
    ServeConfig,
    normalize_engine_url,
    normalize_path,
    normalize_roots,
    public_url,
    resolve_api_token,
)
from runtime.kv_events.cli_options import kv_events_options
from runtime.kv_events.settings import KvEventsFlags, build_settings
from runtime.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from runtime.metrics.rules import (
    DEFAULT_PROFILE,
    RulesError,
    RuleSet,
    available_profiles,
    build_ruleset,
    engine_choices,
    load_rules_file,
)

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("airuntime")


def _engine_choice() -> click.Choice[str]:
    return click.Choice(engine_choices(), case_sensitive=False)


def metrics_options(func: F) -> F:
    """Options shared by `serve` and `metrics rewrite`: both run the same rewriter with the same rules."""
    options = [
        click.option(
            "-E",
            "--engine",
            type=_engine_choice(),
            default="auto",
            show_default=True,
            envvar=["AIRUNTIME_ENGINE", "INFERENCE_ENGINE"],
            help="Inference engine beside the sidecar; auto recognises it from its metrics.",
        ),
        click.option(
            "--metrics-prefix",
            default=None,
            envvar="AIRUNTIME_METRICS_PREFIX",
            help="Prefix of unified metric names, PREFIX:name [default: airuntime, or the profile's].",
        ),
        click.option(
            "--metrics-profile",
            type=click.Choice(available_profiles()),
            default=DEFAULT_PROFILE,
            show_default=True,
            envvar="AIRUNTIME_METRICS_PROFILE",
            help="Name set of the unified families: our own, or another product's (aibrix).",
        ),
        click.option(
            "--metrics-rules",
            type=click.Path(dir_okay=False),
            default=None,
            envvar="AIRUNTIME_METRICS_RULES",
            help="JSON or YAML file of extra or replacing rename rules.",
        ),
        click.option(
            "--raw-metrics/--no-raw-metrics",
            default=True,
            show_default=True,
            envvar="AIRUNTIME_RAW_METRICS",
            help="Keep the engine's own families beside the unified ones.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def compile_rules(engine: str, metrics_prefix: str | None, metrics_profile: str, metrics_rules: str | None) -> RuleSet:
    overrides = load_rules_file(metrics_rules) if metrics_rules else None
    return build_ruleset(engine.lower(), prefix=metrics_prefix, profile=metrics_profile, overrides=overrides)


@click.group(
    invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.option("--version", is_flag=True, help="Show version, git commit, build date and Python, then exit.")
@click.pass_context
def cli(ctx: click.Context, version: bool) -> None:
    """airuntime: the management sidecar beside an LLM inference engine."""
    if version:
        from runtime.build_info import version_text

        click.echo(version_text())
        raise click.exceptions.Exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command()
@metrics_options
@click.option(
    "-B",
    "--engine-url",
    "--engine-base-url",
    "engine_url",
    default="http://localhost:8000",
    show_default=True,
    envvar=["AIRUNTIME_ENGINE_URL", "INFERENCE_ENGINE_ENDPOINT"],
    help="Base URL of the engine (env AIRUNTIME_ENGINE_URL, INFERENCE_ENGINE_ENDPOINT).",
)
@click.option(
    "-M",
    "--engine-metrics-path",
    default=None,
    envvar=["AIRUNTIME_ENGINE_METRICS_PATH", "METRIC_SCRAPE_PATH"],
    help="Path of the engine's Prometheus endpoint [default: the engine's own, /metrics for most].",
)
@click.option(
    "--engine-health-path",
    default=None,
    envvar="AIRUNTIME_ENGINE_HEALTH_PATH",
    help="Path of the engine's health check used by /ready [default: the engine's own, e.g. /health].",
)
@click.option(
    "--engine-api-key",
    default=None,
    envvar=["AIRUNTIME_ENGINE_API_KEY", "INFERENCE_ENGINE_API_KEY"],
    help="Sent to the engine as a Bearer token (env INFERENCE_ENGINE_API_KEY too). Never logged.",
)
@click.option("-H", "--host", default="0.0.0.0", show_default=True, envvar="AIRUNTIME_HOST", help="Listen address.")
@click.option(
    "-P",
    "--port",
    type=click.IntRange(1, 65535),
    default=9000,
    show_default=True,
    envvar="AIRUNTIME_PORT",
    help="Listen port.",
)
@click.option(
    "--scrape-timeout",
    type=click.FloatRange(0.05, 300),
    default=2.0,
    show_default=True,
    envvar="AIRUNTIME_SCRAPE_TIMEOUT",
    help="Seconds to wait for the engine's metrics or health answer.",
)
@click.option("-I", "--pod", default="", envvar="AIRUNTIME_POD", help="Pod name, shown in sidecar_info.")
@click.option("-N", "--model", default="", envvar="AIRUNTIME_MODEL", help="Model name, shown in sidecar_info.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    envvar="AIRUNTIME_LOG_LEVEL",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    envvar="AIRUNTIME_LOG_FORMAT",
)
@click.option(
    "--models-dir",
    default="/tmp/airuntime/models",
    show_default=True,
    envvar=["AIRUNTIME_MODELS_DIR", "DOWNLOADER_LOCAL_DIR"],
    help="Base of relative download targets and of AIBrix's /v1/model/list (env DOWNLOADER_LOCAL_DIR too).",
)
@click.option(
    "--adapters-dir",
    default="/tmp/airuntime/adapters",
    show_default=True,
    envvar="AIRUNTIME_ADAPTERS_DIR",
    help="Where LoRA adapters downloaded without an output_dir land (ADAPTERS_DIR/NAME).",
)
@click.option(
    "--lora-adapters",
    "lora_adapters_file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="AIRUNTIME_LORA_ADAPTERS",
    help="YAML/JSON list of {name, source} adapters kept loaded; re-read when it changes.",
)
@click.option(
    "--lora-reconcile-interval",
    type=click.FloatRange(0.2, 3600),
    default=5.0,
    show_default=True,
    envvar="AIRUNTIME_LORA_RECONCILE_INTERVAL",
    help="Seconds between checks that the engine still has every desired adapter.",
)
@click.option(
    "--api-token",
    default=None,
    envvar="AIRUNTIME_API_TOKEN",
    help="Require `Authorization: Bearer TOKEN` on the management API (downloads, LoRA). Never logged.",
)
@click.option(
    "--api-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="AIRUNTIME_API_TOKEN_FILE",
    help="Read the API token from this file (e.g. a mounted Secret) instead of the command line.",
)
@click.option(
    "--protect-metrics/--no-protect-metrics",
    default=False,
    show_default=True,
    envvar="AIRUNTIME_PROTECT_METRICS",
    help="Require the API token on /metrics too (probes stay open for the kubelet).",
)
@click.option(
    "--allowed-root",
    "allowed_roots",
    multiple=True,
    type=click.Path(file_okay=False),
    envvar="AIRUNTIME_ALLOWED_ROOTS",
    help="Directory every output_dir, local_dir, lora_path and pvc:// path must resolve into; repeatable "
    "(env: colon-separated). Unset: any path.",
)
@click.option(
    "--max-request-bytes",
    type=click.IntRange(1024, 1 << 30),
    default=1024 * 1024,
    show_default=True,
    envvar="AIRUNTIME_MAX_REQUEST_BYTES",
    help="Largest request body accepted (413 beyond).",
)
@click.option(
    "--max-scrape-bytes",
    type=click.IntRange(1024, 1 << 31),
    default=4 * 1024 * 1024,
    show_default=True,
    envvar="AIRUNTIME_MAX_SCRAPE_BYTES",
    help="Largest engine /metrics answer read; a bigger one fails the scrape (reason too_large).",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0.5, 3600),
    default=20.0,
    show_default=True,
    envvar="AIRUNTIME_SHUTDOWN_TIMEOUT",
    help="Seconds SIGTERM waits for requests and downloads before checkpointing them and exiting.",
)
@kv_events_options
@click.option("--print-config", is_flag=True, help="Print the effective configuration as JSON and exit.")
def serve(
    engine: str,
    metrics_prefix: str | None,
    metrics_profile: str,
    metrics_rules: str | None,
    raw_metrics: bool,
    engine_url: str,
    engine_metrics_path: str,
    engine_health_path: str | None,
    engine_api_key: str | None,
    host: str,
    port: int,
    scrape_timeout: float,
    pod: str,
    model: str,
    log_level: str,
    log_format: str,
    models_dir: str,
    adapters_dir: str,
    lora_adapters_file: str | None,
    lora_reconcile_interval: float,
    api_token: str | None,
    api_token_file: str | None,
    protect_metrics: bool,
    allowed_roots: tuple[str, ...],
    max_request_bytes: int,
    max_scrape_bytes: int,
    shutdown_timeout: float,
    print_config: bool,
    kv_events_flags: KvEventsFlags,
) -> None:
    """Run the sidecar: unified /metrics, /health and /ready beside the engine."""
    kv_events, kv_events_notes = build_settings(kv_events_flags, engine=engine.lower(), pod=pod, model=model)
    config = ServeConfig(
        engine=engine.lower(),
        engine_url=normalize_engine_url(engine_url),
        engine_metrics_path=normalize_path(engine_metrics_path, "--engine-metrics-path")
        if engine_metrics_path
        else None,
        engine_health_path=normalize_path(engine_health_path, "--engine-health-path") if engine_health_path else None,
        engine_api_key=engine_api_key or None,
        host=host,
        port=port,
        metrics_prefix=metrics_prefix,
        metrics_profile=metrics_profile,
        metrics_rules=metrics_rules,
        raw_metrics=raw_metrics,
        scrape_timeout=scrape_timeout,
        log_level=log_level.lower(),
        log_format=log_format,
        pod=pod,
        model=model,
        models_dir=models_dir,
        adapters_dir=adapters_dir,
        lora_adapters_file=lora_adapters_file,
        lora_reconcile_interval=lora_reconcile_interval,
        api_token=resolve_api_token(api_token, api_token_file),
        protect_metrics=protect_metrics,
        allowed_roots=normalize_roots(allowed_roots),
        max_request_bytes=max_request_bytes,
        max_scrape_bytes=max_scrape_bytes,
        shutdown_timeout=shutdown_timeout,
        kv_events=kv_events,
    )
    if config.engine_api_key and public_url(config.engine_url) != config.engine_url:
        raise ConfigError("the engine URL carries a user/password and --engine-api-key is set; give only one")
    if protect_metrics and not config.api_token:
        raise ConfigError("--protect-metrics needs --api-token or --api-token-file")
    rules = compile_rules(config.engine, metrics_prefix, metrics_profile, metrics_rules)
    if print_config:
        click.echo(orjson.dumps(config.describe(), option=orjson.OPT_INDENT_2).decode())
        return
    configure_logging(config.log_level, config.log_format)
    log.info("starting airuntime %s", __version__, extra={"fields": {"config": config.describe()}})
    for note in kv_events_notes:
        log.warning(note)
    from runtime.server.lifecycle import serve as run_server

    run_server(config, rules)


@cli.command()
@click.argument("source", required=False)
@click.option("--model-uri", "model_uri", default=None, help="AIBrix spelling of SOURCE.")
@click.option(
    "--local-dir",
    type=click.Path(file_okay=False),
    envvar="DOWNLOADER_LOCAL_DIR",
    required=True,
    help="Target directory (env DOWNLOADER_LOCAL_DIR).",
)
@click.option("--model-name", default=None, help="AIBrix: download into LOCAL_DIR/MODEL_NAME.")
@click.option("--revision", default=None, help="HuggingFace branch, tag or commit (default main, or HF_REVISION).")
@click.option(
    "--allow-suffix",
    default="",
    envvar="DOWNLOADER_ALLOW_FILE_SUFFIX",
    help="Only files ending with one of these, comma-separated, e.g. json,safetensors.",
)
@click.option("--allow-pattern", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--ignore-pattern", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option(
    "--max-workers",
    type=click.IntRange(1, 256),
    default=16,
    show_default=True,
    envvar="DOWNLOADER_NUM_THREADS",
    help="Parallel transfers (env DOWNLOADER_NUM_THREADS).",
)
@click.option("--part-size-mib", type=click.IntRange(1, 4096), default=32, show_default=True, help="Ranged part size.")
@click.option(
    "--config",
    "config_json",
    default=None,
    help="JSON object: hf_token hf_endpoint access_key secret_key endpoint region addressing_style verify_md5.",
)
@click.option("--download-extra-config", default=None, help="AIBrix JSON: ak sk endpoint region hf_token ...")
@click.option("--force", is_flag=True, envvar="DOWNLOADER_FORCE_DOWNLOAD", help="Fetch every file again.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display; only the final line.")
@click.option("--enable-progress-bar", is_flag=True, hidden=True, help="AIBrix flag; the bar shows on a terminal.")
def download(
    source: str | None,
    model_uri: str | None,
    local_dir: str,
    model_name: str | None,
    revision: str | None,
    allow_suffix: str,
    allow_pattern: tuple[str, ...],
    ignore_pattern: tuple[str, ...],
    max_workers: int,
    part_size_mib: int,
    config_json: str | None,
    download_extra_config: str | None,
    force: bool,
    quiet: bool,
    enable_progress_bar: bool,
) -> None:
    """Download a model (HF org/repo, s3://, tos://, obs://, gs://, az://, pvc://, https://) into --local-dir.

    Exits 0 only when every file is complete and verified.
    """
    from runtime.download.cli_run import run_cli_download

    uri = source or model_uri
    if not uri:
        raise click.UsageError("give the SOURCE (or --model-uri)")
    if source and model_uri and source != model_uri:
        raise click.UsageError("give SOURCE or --model-uri, not two different sources")
    run_cli_download(
        uri=uri,
        local_dir=local_dir,
        model_name=model_name,
        revision=revision,
        allow_suffix=allow_suffix,
        allow_patterns=allow_pattern,
        ignore_patterns=ignore_pattern,
        max_workers=max_workers,
        part_size=part_size_mib * 1024 * 1024,
        config_json=config_json,
        extra_config_json=download_extra_config,
        force=force,
        quiet=quiet,
    )


@cli.command()
@click.argument("path", default="/health")
@click.option("-P", "--port", type=click.IntRange(1, 65535), default=9000, show_default=True, envvar="AIRUNTIME_PORT")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the sidecar listens.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True)
def probe(path: str, port: int, host: str, timeout: float) -> None:
    """Exit 0 when the sidecar answers 200 on PATH (/health, /ready): an exec probe for distroless images and
    loopback-only listeners, where the kubelet's httpGet cannot reach."""
    import http.client

    if not path.startswith("/"):
        raise click.BadParameter("must start with /", param_hint="PATH")
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        raise click.ClickException(f"http://{host}:{port}{path}: {exc or type(exc).__name__}") from None
    finally:
        connection.close()
    if status != 200:
        raise click.ClickException(f"http://{host}:{port}{path} answered HTTP {status}")


@cli.group()
def metrics() -> None:
    """Work with metric rewriting offline."""


@metrics.command("rewrite")
@metrics_options
def rewrite(
    engine: str, metrics_prefix: str | None, metrics_profile: str, metrics_rules: str | None, raw_metrics: bool
) -> None:
    """Rewrite an exposition read on stdin to stdout, exactly as `serve` rewrites the engine's /metrics."""
    from runtime.metrics.rewriter import MetricsRewriter

    rules = compile_rules(engine, metrics_prefix, metrics_profile, metrics_rules)
    rewriter = MetricsRewriter(rules, keep_raw=raw_metrics)
    source = sys.stdin.buffer
    read = getattr(source, "read1", source.read)
    sink = sys.stdout.buffer
    while chunk := read(64 * 1024):
        rewriter.feed(chunk)
        sink.write(rewriter.take_bytes())
    rewriter.finish()
    sink.write(rewriter.take_bytes())
    sink.flush()
    if rewriter.invalid_lines:
        click.echo(f"airuntime: dropped {rewriter.invalid_lines} invalid line(s)", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click's own errors and ours become one line on stderr."""
    try:
        cli.main(args=argv, prog_name="airuntime", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"airuntime: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (ConfigError, RulesError) as exc:
        click.echo(f"airuntime: error: {exc}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(1)
