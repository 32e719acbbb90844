"""KV-event relay throughput: recorded vLLM batches replayed as fast as possible through a relay into a real Redis.

The stream is the real vLLM 0.32 recording (tests/fixtures/vllm-0.32.0.kv-events.jsonl: stores with a shared
prefix, a LoRA request, evictions, a prefix-cache reset) repeated CYCLES times with every block hash and token id
shifted per cycle, so every cycle is new content; encoded as vLLM 0.32 sends it (tagged maps) and in the legacy
positional form (tagged arrays, what Kthena's runtime can decode). A publisher process (a ZeroMQ PUB socket bound on
127.0.0.1, unlimited send queue, each batch's timestamp set as it is sent) feeds one relay at a time, pinned to one
core with taskset: `airuntime serve` (or $AIRUNTIME_BIN) and, when its command is given, Kthena's runtime
(`python/kthena/runtime/app.py` from a volcano-sh/kthena checkout, in its own venv; see bench/README.md). The last
batch stores a sentinel block; the run ends when Redis has it.

Reported per relay and encoding: blocks/s (stored + removed block entries over the time from the first batch sent
to the sentinel in Redis), the relay's CPU per 1,000 blocks and Redis's, the relay's lag (its own histogram:
engine timestamp to Redis write; airuntime only), the drain time after the last batch was sent, peak RSS, and
whether the pod's claims in Redis equal the reference model of the stream (tests/support/kv_events.py).

    .venv/bin/python bench/kv_events_bench.py                        # airuntime, map and array encodings
    .venv/bin/python bench/kv_events_bench.py --kthena-cmd "..."     # plus Kthena (see bench/README.md)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import struct
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import msgspec  # noqa: E402
import zmq  # noqa: E402

from bench.common import (  # noqa: E402
    RssSampler,
    cpu_seconds,
    host_info,
    print_header,
    start_group,
    stop_group,
    terminate_as_interrupt,
    write_json,
)
from tests.peers.processes import pick_port_base  # noqa: E402
from tests.peers.redis_server import RedisPeer, running_redis  # noqa: E402
from tests.support.exposition import sample_values  # noqa: E402
from tests.support.kv_events import (  # noqa: E402
    FIXTURES,
    ReferenceOwnership,
    load_frames,
    pod_fields,
    standardized_hash,
)
from tests.support.sidecar import free_port, sidecar_command  # noqa: E402

POD, MODEL, TOPIC = "bench-0.default", "bench", "kv-events"
MASK64 = (1 << 64) - 1
TOKEN_SHIFT = 512  # the recording's vocabulary: cycle c uses token ids [512c, 512c + 512)
SENTINEL_TOKENS = [4_000_000_000 + i for i in range(32)]
KTHENA_CMD_HELP = (
    "shell command starting Kthena's runtime; {port} is replaced, REDIS_* and VLLM_ZMQ_* are set by the bench, e.g. "
    "'env PYTHONPATH=/tmp/bench/kthena-src/python /tmp/bench/kthena-venv/bin/python "
    "/tmp/bench/kthena-src/python/kthena/runtime/app.py -E vllm -H 127.0.0.1 -P {port} -I bench-0.default -N bench'"
)


# ------------------------------------------------------------------------------------------------- the stream


def shift_event(event: dict[str, Any], cycle: int) -> dict[str, Any]:
    shifted = dict(event)
    if "block_hashes" in event:
        shifted["block_hashes"] = [(h + cycle * 0x9E3779B97F4A7C15) & MASK64 for h in event["block_hashes"]]
    if event.get("parent_block_hash") is not None:
        shifted["parent_block_hash"] = (event["parent_block_hash"] + cycle * 0x9E3779B97F4A7C15) & MASK64
    if "token_ids" in event:
        shifted["token_ids"] = [t + TOKEN_SHIFT * cycle for t in event["token_ids"]]
    return shifted


def as_array(event: dict[str, Any]) -> list[Any]:
    """The legacy positional form (vLLM up to ~0.23), byte for byte what its array_like structs encode."""
    kind = event["type"]
    if kind == "BlockStored":
        fields = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name")
        return [kind, *(event.get(name) for name in fields)]
    if kind == "BlockRemoved":
        return [kind, event["block_hashes"], event.get("medium")]
    return [kind]


@dataclass
class Stream:
    payloads: list[bytes]
    sizes: list[int]  # block entries per payload
    blocks: int  # stored + removed block entries
    reference: ReferenceOwnership


def build_stream(cycles: int, encoding: str) -> Stream:
    recorded = [
        msgspec.msgpack.decode(frame.payload) for frame in load_frames(FIXTURES / "vllm-0.32.0.kv-events.jsonl")
    ]
    payloads, sizes, reference = [], [], ReferenceOwnership(MODEL)
    sentinel = {"type": "BlockStored", "block_hashes": [MASK64], "parent_block_hash": None}
    sentinel |= {"token_ids": SENTINEL_TOKENS, "block_size": 32, "lora_id": None, "medium": "GPU", "lora_name": None}
    batches = [(cycle, events) for cycle in range(cycles) for _, events, _ in recorded] + [(0, [sentinel])]
    for cycle, events in batches:
        shifted = [shift_event(event, cycle) for event in events]
        for event in shifted:
            reference.apply_event(event, 0)
        sizes.append(sum(len(event.get("block_hashes", ())) for event in shifted))
        wire = shifted if encoding == "map" else [as_array(event) for event in shifted]
        payload = msgspec.msgpack.encode([0.0, wire, 0])
        assert payload[:2] == b"\x93\xcb", "the timestamp must be a float64 at bytes 2..10"
        payloads.append(payload)
    return Stream(payloads, sizes, sum(sizes), reference)


def warmup_payload(n: int) -> bytes:
    event = ["BlockStored", [n + 1], None, [3_000_000_000 + n] * 32, 32, None, "GPU", None]
    return msgspec.msgpack.encode([time.time(), [event], 0])


# ------------------------------------------------------------------------------------------------- the publisher


def publisher_main(endpoint: str, stream: Stream, rate: float, control: Any) -> None:
    """A PUB socket (unlimited queue): warm-up batches until told to go, then every payload, timestamped as it is
    sent: as fast as possible, or paced to `rate` blocks/s."""
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(endpoint)
    topic, seq = TOPIC.encode(), 0
    pack = struct.Struct(">d").pack
    while not control.poll(0.2):
        pub.send_multipart([topic, seq.to_bytes(8, "big"), warmup_payload(seq)])
        seq += 1
    control.recv()
    started, sent_blocks = time.time(), 0
    for payload, size in zip(stream.payloads, stream.sizes, strict=True):
        if rate:
            ahead = started + sent_blocks / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
            sent_blocks += size
        pub.send_multipart([topic, seq.to_bytes(8, "big"), b"\x93\xcb" + pack(time.time()) + payload[10:]])
        seq += 1
    control.send((started, time.time()))
    control.recv()  # keep the socket (and its queue) until the bench is done
    pub.close(linger=0)
    context.term()


# ------------------------------------------------------------------------------------------------- one run


@dataclass
class Result:
    relay: str
    encoding: str
    blocks: int
    seconds: float | None
    blocks_per_s: float | None
    relay_cpu_ms_per_1000: float | None
    redis_cpu_ms_per_1000: float | None
    drain_s: float | None
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    peak_rss_mib: float
    claims_correct: bool
    claims_written: int
    claims_expected: int
    note: str = ""
    rate: float = 0  # blocks/s the publisher was paced to (0: as fast as possible)


def relay_command(relay: str, port: int, kthena_cmd: str | None) -> list[str]:
    if relay == "kthena":
        assert kthena_cmd is not None
        return shlex.split(kthena_cmd.replace("{port}", str(port)))
    args = ["serve", "--engine", "vllm", "--engine-url", "http://127.0.0.1:9", "--pod", POD, "--model", MODEL]
    return [*sidecar_command(), *args, "--host", "127.0.0.1", "--port", str(port)]


def wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def lag_quantiles(port: int) -> tuple[float | None, float | None]:
    """p50 and p99 of airuntime's lag histogram (upper bucket bounds), in ms."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            samples = sample_values(response.read())
    except OSError:
        return None, None
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "airuntime:kv_events_lag_seconds_bucket"
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None, None
    quantile = [next(le for le, count in buckets if count >= q * total) * 1000 for q in (0.5, 0.99)]
    return quantile[0], quantile[1]


def run_one(
    relay: str, encoding: str, stream: Stream, redis: RedisPeer, args: argparse.Namespace, rate: float = 0
) -> Result:
    redis.client().flushall()
    endpoint = f"tcp://127.0.0.1:{pick_port_base()}"
    parent, child = mp.Pipe()
    publisher = mp.Process(target=publisher_main, args=(endpoint, stream, rate, child), daemon=True)
    publisher.start()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port)}
    env |= {"REDIS_PASSWORD": redis.password or "", "VLLM_ZMQ_ENDPOINT": endpoint, "VLLM_ZMQ_TOPIC_FILTER": TOPIC}
    command = ["taskset", "-c", str(args.core), *relay_command(relay, port, args.kthena_cmd)]
    with tempfile.TemporaryFile() as log:
        proc = start_group(command, log, env=env, cwd=REPO_ROOT)
        try:
            result = measure(relay, encoding, stream, redis, proc, parent, port, args)
            result.rate = rate
            return result
        except BaseException:
            log.seek(0)
            print(log.read().decode(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            stop_group(proc)
            parent.send("stop")
            publisher.join(10)


def measure(
    relay: str, encoding: str, stream: Stream, redis: RedisPeer, proc: Any, control: Any, port: int, args: Any
) -> Result:
    client = redis.client()
    warm = f"matrix:kv:block:{MODEL}@"
    if not wait_for(lambda: any(client.scan_iter(match=warm + "*", count=1000)), 60):
        raise RuntimeError(f"{relay} wrote nothing for the warm-up batches within 60 s")
    time.sleep(0.5)
    client.flushall()  # the warm-up's keys are not part of the comparison
    redis_pid = redis.pid
    assert redis_pid is not None
    relay_cpu0, redis_cpu0 = cpu_seconds(proc.pid), cpu_seconds(redis_pid)
    sentinel = f"matrix:kv:block:{MODEL}@{standardized_hash(SENTINEL_TOKENS)}"
    with RssSampler(proc.pid) as rss:
        control.send("go")
        go = time.monotonic()
        wait_for(
            lambda: client.hexists(sentinel, POD) or (time.monotonic() - go > 30 and not client.dbsize()), args.timeout
        )
        done = bool(client.hexists(sentinel, POD))
        finished = time.time()
    started, sent = control.recv()
    relay_cpu1, redis_cpu1 = cpu_seconds(proc.pid), cpu_seconds(redis_pid)
    seconds = finished - started if done else None
    written = pod_fields(client, POD, f"matrix:kv:block:{MODEL}@*")
    expected = {digest for model, digest in stream.reference.owned() if model == MODEL}
    p50, p99 = lag_quantiles(port) if relay == "airuntime" else (None, None)
    per_1000 = 1000 / stream.blocks
    return Result(
        relay=relay,
        encoding=encoding,
        blocks=stream.blocks,
        seconds=seconds,
        blocks_per_s=stream.blocks / seconds if seconds else None,
        relay_cpu_ms_per_1000=(relay_cpu1 - relay_cpu0) * 1000 * per_1000 if done and relay_cpu1 else None,
        redis_cpu_ms_per_1000=(redis_cpu1 - redis_cpu0) * 1000 * per_1000 if done and redis_cpu1 else None,
        drain_s=finished - sent if done else None,
        lag_p50_ms=p50,
        lag_p99_ms=p99,
        peak_rss_mib=rss.peak / 2**20,
        claims_correct={digest for _, digest in written} == expected,
        claims_written=len(written),
        claims_expected=len(expected),
        note="" if done else "nothing written in 30 s" if not written else f"no sentinel in {args.timeout:.0f} s",
    )


# ------------------------------------------------------------------------------------------------- report


def print_table(results: list[Result]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print_header(
        f"{'relay':<10} {'encoding':<8} {'sent at':>9} {'blocks':>8} {'blocks/s':>9} {'cpu ms/1k':>9} "
        f"{'redis ms/1k':>11} {'lag p50/p99 ms':>15} {'drain s':>7} {'rss MiB':>7} {'claims right':>12}"
    )
    for r in results:
        lag = f"{fmt(r.lag_p50_ms, '.0f')}/{fmt(r.lag_p99_ms, '.0f')}"
        right = "yes" if r.claims_correct else f"no {r.claims_written}/{r.claims_expected}"
        pace = f"{r.rate:,.0f}/s" if r.rate else "max"
        print(
            f"{r.relay:<10} {r.encoding:<8} {pace:>9} {r.blocks:>8} {fmt(r.blocks_per_s, ',.0f'):>9} "
            f"{fmt(r.relay_cpu_ms_per_1000, '.1f'):>9} {fmt(r.redis_cpu_ms_per_1000, '.1f'):>11} {lag:>15} "
            f"{fmt(r.drain_s, '.2f'):>7} {r.peak_rss_mib:>7.0f} {right:>12} {r.note}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1500, help="repetitions of the recording for airuntime")
    parser.add_argument("--kthena-cycles", type=int, default=100, help="repetitions for Kthena (it is slower)")
    parser.add_argument("--encodings", default="map,array")
    parser.add_argument("--kthena-cmd", default=os.environ.get("AIRUNTIME_BENCH_KTHENA_CMD"), help=KTHENA_CMD_HELP)
    parser.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1, help="the one core the relay runs on")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--paced-rate", type=float, default=20_000, help="blocks/s of the extra paced airuntime run (lag); 0: none"
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results" / "kv_events_bench.json")
    args = parser.parse_args(argv)
    relays = ["airuntime"] + (["kthena"] if args.kthena_cmd else [])
    results: list[Result] = []
    with terminate_as_interrupt(), running_redis(password="bench-redis-password") as redis:
        for encoding in args.encodings.split(","):
            for relay in relays:
                stream = build_stream(args.kthena_cycles if relay == "kthena" else args.cycles, encoding)
                print(f"{relay}, {encoding}: {len(stream.payloads)} batches, {stream.blocks} blocks", flush=True)
                results.append(run_one(relay, encoding, stream, redis, args))
        if args.paced_rate:
            stream = build_stream(max(1, int(args.paced_rate * 10 / 153)), "map")  # about 10 s of traffic
            print(f"airuntime, map, paced at {args.paced_rate:,.0f} blocks/s: {stream.blocks} blocks", flush=True)
            results.append(run_one("airuntime", "map", stream, redis, args, rate=args.paced_rate))
    print()
    print_table(results)
    write_json(args.output, {"host": host_info(), "results": [asdict(r) for r in results]})
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
