"""What `airuntime download` takes: each option declared once (flag, variable, help), as `serve`'s settings are.

The source itself is the positional SOURCE, Kthena's `-s/--source` or AIBrix's `--model-uri` (runtime/cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.settings import setting


@dataclass(frozen=True)
class CliDownload:
    source: str = ""
    local_dir: str = setting(
        None, "-o", "--local-dir", "--output-dir", env=("DOWNLOADER_LOCAL_DIR",), kind="dir", required=True,
        help="Target directory (Kthena: --output-dir).",
    )  # fmt: skip
    model_name: str | None = setting(None, "--model-name", help="AIBrix: download into LOCAL_DIR/MODEL_NAME.")
    revision: str | None = setting(None, "--revision", help="Branch, tag or commit (Hugging Face, ModelScope).")
    allow_suffix: str | None = setting(
        None, "--allow-suffix", help="Only files ending with one of these, comma-separated: json,safetensors "
        "[env DOWNLOADER_ALLOW_FILE_SUFFIX].",
    )  # fmt: skip
    allow_patterns: tuple[str, ...] = setting(
        (), "--allow-pattern", multiple=True, help="Only files matching this glob."
    )
    ignore_patterns: tuple[str, ...] = setting(
        (), "--ignore-pattern", multiple=True, help="Skip files matching this glob."
    )
    max_workers: int | None = setting(
        None, "-w", "--max-workers", kind="int", low=1, high=256,
        help="Parallel transfers [env DOWNLOADER_NUM_THREADS, else 16].",
    )  # fmt: skip
    part_size_mib: int | None = setting(None, "--part-size-mib", kind="int", low=1, high=16384, help="Part size [32].")
    config_json: str | None = setting(
        None, "-c", "--config",
        help="JSON object (Kthena's): hf_token hf_endpoint ms_token ms_endpoint access_key secret_key endpoint ...",
    )  # fmt: skip
    extra_config_json: str | None = setting(
        None, "--download-extra-config", help="AIBrix JSON: ak sk endpoint region num_threads ..."
    )
    force: bool = setting(False, "--force", kind="flag", help="Fetch every file again [env DOWNLOADER_FORCE_DOWNLOAD].")
    quiet: bool = setting(False, "-q", "--quiet", kind="flag", help="No progress display; only the final line.")
    enable_progress_bar: bool = setting(
        False, "--enable-progress-bar", kind="flag", hidden=True, help="AIBrix's flag; the bar shows on a terminal."
    )
    aibrix_layout: bool = setting(
        False, "--aibrix-layout", kind="flag", hidden=True, help="As aibrix_download: LOCAL_DIR/MODEL_NAME, printed."
    )
