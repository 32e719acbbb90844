"""The `airuntime` command line: `serve`, `download`, `probe` and `metrics rewrite`, and what runs when the program
is invoked under another name or with arguments alone.

`serve`'s and `download`'s options come from settings declared once (runtime/config.py, runtime/download/cli_args.py:
flag > AIRUNTIME_* > AIBrix's or Kthena's variable > default). `route` picks the command: under AIBrix's names
(`aibrix_runtime`, `aibrix_download`) with AIBrix's defaults; arguments that start with an option run `serve`, or
`download` when they name a source (Kthena's image entry points). Bad input ends with one readable line on stderr
and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click
import orjson

from runtime import __version__
from runtime.cli_options import settings_options
from runtime.config import ServeConfig, canonical_engine
from runtime.download.cli_args import CliDownload
from runtime.errors import SidecarError
from runtime.logs import configure_logging

if TYPE_CHECKING:
    from runtime.metrics.rules import RuleSet

log = logging.getLogger("airuntime")

METRICS_SETTINGS = ("engine", "metrics_prefix", "metrics_profile", "metrics_rules", "raw_metrics")


def compile_rules(engine: str, metrics_prefix: str | None, metrics_profile: str, metrics_rules: str | None) -> RuleSet:
    from runtime.metrics.rules import build_ruleset, load_rules_file  # not on the download path (aiohttp, ssl)

    overrides = load_rules_file(metrics_rules) if metrics_rules else None
    return build_ruleset(canonical_engine(engine), prefix=metrics_prefix, profile=metrics_profile, overrides=overrides)


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
@settings_options()
@click.option("--print-config", is_flag=True, help="Print the effective configuration as JSON and exit.")
@click.option("--enable-fastapi-docs", is_flag=True, hidden=True, help="AIBrix flag: /openapi.json is always served.")
def serve(print_config: bool, enable_fastapi_docs: bool, **settings: Any) -> None:
    """Run the sidecar: unified /metrics, /health and /ready beside the engine, downloads, LoRA adapters."""
    config = ServeConfig.from_options(settings)
    rules = compile_rules(config.engine, config.metrics_prefix, config.metrics_profile, config.metrics_rules)
    if print_config:
        click.echo(orjson.dumps(config.describe(), option=orjson.OPT_INDENT_2).decode())
        return
    configure_logging(config.log_level, config.log_format)
    log.info("starting airuntime %s", __version__, extra={"fields": {"config": config.describe()}})
    for note in config.notes:
        log.warning(note)
    from runtime.server.lifecycle import serve as run_server

    run_server(config, rules)


@cli.command()
@click.argument("source", required=False)
@click.option("-s", "--source", "source_option", default=None, help="Kthena spelling of SOURCE.")
@click.option("--model-uri", default=None, help="AIBrix spelling of SOURCE.")
@settings_options(declared_in=CliDownload)
def download(source: str | None, source_option: str | None, model_uri: str | None, **options: Any) -> None:
    """Download a model (HF org/repo, s3://, tos://, obs://, gs://, az://, pvc://, https://) into --local-dir.

    Exits 0 only when every file is complete and verified.
    """
    from runtime.download.cli_run import run_cli_download

    given = {value for value in (source, source_option, model_uri) if value}
    if not given:
        raise click.UsageError("give the SOURCE (or --source, or --model-uri)")
    if len(given) > 1:
        raise click.UsageError("give one source: SOURCE, --source or --model-uri")
    asked = CliDownload(source=given.pop(), **options)
    if asked.aibrix_layout:  # aibrix_download: the model goes into LOCAL_DIR/<its name>, whose path ends the output
        from runtime.download import aibrix

        asked = replace(asked, model_name=aibrix.model_name(asked.source, asked.model_name))
    target = run_cli_download(asked)
    if asked.aibrix_layout:
        click.echo(str(target))


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
@settings_options(only=METRICS_SETTINGS)
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


# Invoked under AIBrix's command names (links in the image, console scripts of the package), the program behaves as
# that command, with AIBrix's defaults where they differ from ours and matter to its manifests: the port its
# controller calls, the adapters folder its webhook shares with the engine, the models folder, its metric names.
AIBRIX_RUNTIME_DEFAULTS = {
    "port": 8080,
    "adapters_dir": "/tmp/aibrix/adapters",
    "models_dir": "/tmp/aibrix/models",
    "metrics_profile": "aibrix",
}
AIBRIX_DOWNLOAD_DEFAULTS = {"local_dir": "/tmp/aibrix/models", "aibrix_layout": True}
PROGRAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "aibrix_runtime": ("serve", AIBRIX_RUNTIME_DEFAULTS),
    "aibrix_download": ("download", AIBRIX_DOWNLOAD_DEFAULTS),
}
# Arguments that start with an option name a command: Kthena's downloader passes `--source X --output-dir Y`, its
# runtime `--port 8100 --engine vllm ...`, both to the image's entry point.
DOWNLOAD_SOURCE_OPTIONS = ("-s", "--source", "--model-uri")
GROUP_OPTIONS = ("--version", "-h", "--help")


def route(program: str, args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The command line to run and click's default_map, from the name the program was invoked under and its
    arguments."""
    command, defaults = PROGRAMS.get(program, ("", {}))
    if command:
        return [command, *args], {command: defaults}
    if args and args[0].startswith("-") and args[0] not in GROUP_OPTIONS:
        is_download = any(arg.split("=", 1)[0] in DOWNLOAD_SOURCE_OPTIONS for arg in args)
        return ["download" if is_download else "serve", *args], {}
    return args, {}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click's own errors and ours become one line on stderr."""
    program = os.path.basename(sys.argv[0]) if sys.argv else "airuntime"
    args, defaults = route(program, list(sys.argv[1:] if argv is None else argv))
    try:
        cli.main(args=args, prog_name=program if program in PROGRAMS else "airuntime", standalone_mode=False,
                 default_map=defaults)  # fmt: skip
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"airuntime: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except SidecarError as exc:
        click.echo(f"airuntime: error: {exc.message}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(1)
