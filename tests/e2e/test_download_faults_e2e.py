"""Object-store and Hub faults, end to end through the real CLI (`airuntime download`, or $AIRUNTIME_BIN).

The sources are real servers behind the fault-injecting proxy (tests/peers/fault_proxy.py): SeaweedFS's S3 gateway
(`s3://`) and the HuggingFace Hub emulator (`hf://`). Each fault class is one test, run for both sources where it
applies: 500/503 bursts shorter and longer than the retry budget, throttling (429 with Retry-After, S3's 503
SlowDown), connections dropped mid-file (FIN and RST), a host that does not resolve, a full disk (a 4 MiB tmpfs),
and a target that cannot be written (another uid; a read-only mount).

What every failure must look like: exit status 1, exactly one stderr line `airuntime: error: ...` naming the cause,
no traceback, no credential anywhere in stdout or stderr (the keys and token here are distinctive fakes), and no
file under its final name that is not complete and verified. What must follow: a re-run without the fault
succeeds and fetches only the bytes that were missing (proxy byte counts).

Needs root (tmpfs mounts, setuid) and SeaweedFS (`make peers`); the whole file runs in about two minutes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers.fault_proxy import DropMode, FaultProxy, RequestRecord
from tests.peers.hub_emulator import HubEmulator
from tests.peers.seaweedfs import S3Peer, SeaweedNotInstalledError, running_seaweedfs
from tests.support.sidecar import REPO_ROOT, sidecar_command

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
ACCESS_KEY = "AKIAFAKEFAULTSE2E7Q2X"
SECRET_KEY = "fakeSecretFaultsE2E9f3b1c7ea2d4c6b8"
HF_TOKEN = "hf_fakeFaultsToken7c1e9b3d5a2f"
SECRETS = (ACCESS_KEY, SECRET_KEY, HF_TOKEN)
CLI_TIMEOUT = 90.0
DNS_DEADLINE = 30.0


def partials(directory: Path, name: str) -> list[Path]:
    """The partial files of `name` in `directory`, of any run (their names carry the run's id)."""
    return sorted(p for p in directory.glob(f".{name}.airuntime-partial*") if not p.name.endswith(".json"))


def blob(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"faults-%d" % seed).digest(size)


BIG = "model.bin"
MODEL = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "tokenizer.json": blob(200_000, 2),
    BIG: blob(6 * MIB + 5, 1),  # S3: uploaded single-part, so its ETag is an MD5 the download checks; Hub: LFS
}


@dataclass
class Source:
    """One fault target: a download source with the proxy in front of its server, and how to run the CLI at it."""

    kind: str  # "s3" or "hub"
    proxy: FaultProxy
    uri: str
    big_path: str  # the request path of the big file's bytes (S3 object key, Hub blob URL)
    env: dict[str, str]
    extra_args: list[str]

    def cli(self, target: Path, *args: str, wrapper: Sequence[str] = ()) -> CliResult:
        return run_cli(
            ["download", self.uri, "--local-dir", str(target), "-q", *self.extra_args, *args], self.env, wrapper
        )

    def big_gets(self) -> list[RequestRecord]:
        return self.proxy.matching("GET", self.big_path)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(args: list[str], env: dict[str, str], wrapper: Sequence[str] = ()) -> CliResult:
    """`airuntime ARGS` (the source tree, or $AIRUNTIME_BIN), optionally under a `wrapper` command such as setpriv."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRUNTIME_", "AWS_", "HF_", "DOWNLOADER_"))}
    if os.environ.get("AIRUNTIME_BIN"):
        base["AIRUNTIME_BIN"] = os.environ["AIRUNTIME_BIN"]
    base["PYTHONPATH"] = str(REPO_ROOT)
    started = time.monotonic()
    done = subprocess.run(
        [*wrapper, *sidecar_command(), *args],
        env={**base, **env},
        cwd="/",
        capture_output=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode(), time.monotonic() - started)


def assert_no_secret(result: CliResult) -> None:
    for secret in SECRETS:
        assert secret not in result.stdout and secret not in result.stderr, f"credential {secret[:8]}... leaked"


def assert_ok(result: CliResult) -> None:
    assert result.returncode == 0, result.stderr
    assert_no_secret(result)
    assert "Traceback" not in result.stderr


def error_line(result: CliResult) -> str:
    """The failure's single readable stderr line (asserted), without the `airuntime: error: ` prefix."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert_no_secret(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("airuntime: error: "), lines[0]
    assert len(lines[0]) < 400, lines[0]
    return lines[0].removeprefix("airuntime: error: ")


def assert_model(target: Path) -> None:
    for name, data in MODEL.items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest(), name
    assert not list(target.rglob("*airuntime-partial*")), "partial files left after success"


def final_files(target: Path) -> set[str]:
    return {p.name for p in target.iterdir() if p.is_file() and not p.name.startswith(".")}


def body_bytes(records: list[RequestRecord]) -> int:
    return sum(r.body_bytes_sent for r in records if r.status in (200, 206))


# ------------------------------------------------------------------------------------------------ peers


@pytest.fixture(scope="module")
def s3_peer() -> Iterator[S3Peer]:
    try:
        with running_seaweedfs(ACCESS_KEY, SECRET_KEY, buckets=("faults",)) as peer:
            peer.put_tree("faults", "tiny", MODEL)  # single-part uploads: MD5 ETags
            yield peer
    except SeaweedNotInstalledError as exc:
        pytest.fail(f"{exc} (make peers installs it)")


@pytest.fixture(scope="module")
def hub_peer() -> Iterator[HubEmulator]:
    with HubEmulator() as hub:
        hub.add_repo("org/faulty", MODEL, token=HF_TOKEN)  # private: the token must be sent, and never shown
        yield hub


def s3_source(peer: S3Peer, proxy: FaultProxy, endpoint: str | None = None) -> Source:
    config = {"endpoint": endpoint or proxy.url, "region": peer.region, "addressing_style": "path"}
    return Source(
        kind="s3",
        proxy=proxy,
        uri="s3://faults/tiny",
        big_path=f"/faults/tiny/{BIG}",
        env={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        extra_args=["--config", json.dumps(config)],
    )


def hub_source(hub: HubEmulator, proxy: FaultProxy, endpoint: str | None = None) -> Source:
    sha256 = hub.file_entry("org/faulty", BIG).sha256
    return Source(
        kind="hub",
        proxy=proxy,
        uri="hf://org/faulty",
        big_path=f"/blobs/{sha256}",
        env={
            "HF_ENDPOINT": endpoint or proxy.url,
            "HF_TOKEN": HF_TOKEN,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        },
        extra_args=[],
    )


@pytest.fixture(params=["s3", "hub"])
def source(request: pytest.FixtureRequest) -> Iterator[Source]:
    """Each source behind its own fresh proxy (clean faults and records for every test)."""
    if request.param == "s3":
        peer: S3Peer = request.getfixturevalue("s3_peer")
        with FaultProxy(peer.endpoint) as proxy:
            yield s3_source(peer, proxy)
    else:
        hub: HubEmulator = request.getfixturevalue("hub_peer")
        with FaultProxy(hub.endpoint) as proxy:
            yield hub_source(hub, proxy)


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 4 MiB tmpfs (smaller than the 6 MiB file), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = Path(tempfile.mkdtemp(prefix="airuntime-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        mountpoint.rmdir()


# ------------------------------------------------------------------------------------------------ 5xx bursts


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_burst_shorter_than_the_retry_budget_is_retried_to_identical_bytes(
    source: Source, tmp_path: Path, status: int
) -> None:
    fault = source.proxy.add_fault(method="GET", path=source.big_path, status=status, times=3)
    result = source.cli(tmp_path)
    assert_ok(result)
    assert_model(tmp_path)
    assert fault.applied == 3  # all three failed answers were seen and retried past
    statuses = [r.status for r in source.big_gets()]
    assert statuses[:3] == [status] * 3 and statuses[-1] in (200, 206), statuses


def test_a_5xx_burst_longer_than_the_budget_fails_in_one_line_then_a_rerun_fetches_only_the_missing_part(
    source: Source, tmp_path: Path
) -> None:
    status = 503 if source.kind == "s3" else 500
    # A misbehaving server that echoes the request's credentials in its error body: they must not reach the output.
    echo = f"<Error><Code>InternalError</Code><Message>{ACCESS_KEY} {SECRET_KEY} {HF_TOKEN}</Message></Error>"
    # The big file goes in seven 1 MiB parts (the last one 5 bytes); the third keeps failing, the others land.
    failing = source.proxy.add_fault(
        method="GET", path=source.big_path, range_start=2 * MIB, status=status, body=echo.encode(), times=None
    )
    failed = source.cli(tmp_path, "--part-size-mib", "1", "--max-workers", "2")
    line = error_line(failed)
    assert str(status) in line and BIG in line and "gave up after 7 attempts" in line, line
    assert failing.applied == 7  # the default budget: 1 + 6 retries
    assert BIG not in final_files(tmp_path)  # never an incomplete file under its final name
    (partial,) = partials(tmp_path, BIG)
    record = json.loads(partial.with_name(partial.name + ".json").read_text())
    assert 2 not in record["done"] and len(record["done"]) >= 1

    source.proxy.clear_faults()
    source.proxy.reset_records()
    rerun = source.cli(tmp_path, "--part-size-mib", "1", "--max-workers", "2")
    assert_ok(rerun)
    assert_model(tmp_path)
    gets = source.big_gets()
    missing = sum(min(MIB, len(MODEL[BIG]) - index * MIB) for index in range(7) if index not in record["done"])
    assert body_bytes(gets) == missing < len(MODEL[BIG])  # only the parts that were not done
    assert {r.range for r in gets} >= {f"bytes={2 * MIB}-{3 * MIB - 1}"}


# ------------------------------------------------------------------------------------------------ corruption


def test_a_byte_corrupted_in_transit_is_caught_and_the_file_fetched_again(source: Source, tmp_path: Path) -> None:
    # The file's checksum (S3: the single-part MD5 ETag; Hub: the LFS sha256) is computed while the parts arrive,
    # out of order: one inverted byte in the fourth of seven parts is caught before the file is renamed.
    flipped = source.proxy.add_fault(method="GET", path=source.big_path, range_start=3 * MIB, flip_byte_at=12345)
    result = source.cli(tmp_path, "--part-size-mib", "1", "--max-workers", "4")
    assert_ok(result)
    assert_model(tmp_path)
    assert flipped.applied == 1
    gets = [r for r in source.big_gets() if r.status in (200, 206)]
    assert len(gets) == 14, [r.range for r in gets]  # the whole file twice: a mismatch refetches the file


def test_a_file_corrupted_every_time_fails_in_one_line_and_never_lands(source: Source, tmp_path: Path) -> None:
    source.proxy.add_fault(method="GET", path=source.big_path, range_start=0, flip_byte_at=0, times=None)
    failed = source.cli(tmp_path, "--part-size-mib", "1", "--max-workers", "4")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert_no_secret(failed)
    warning, error = failed.stderr.strip().splitlines()  # the first mismatch is retried, the second is final
    assert warning == "checksum mismatch; fetching the file again", warning
    line = error.removeprefix("airuntime: error: ")
    kind = "md5" if source.kind == "s3" else "sha256"
    assert f"{BIG}: {kind} " in line and "on disk" in line and "at the source" in line, line
    assert BIG not in final_files(tmp_path)
    assert not partials(tmp_path, BIG)  # a mismatching file is not resumable: nothing of it stays


# ------------------------------------------------------------------------------------------------ throttling


def _gaps(records: list[RequestRecord]) -> list[float]:
    return [later.started - earlier.started for earlier, later in itertools.pairwise(records)]


def test_s3_throttling_429_and_503_slowdown_are_retried_with_backoff(s3_peer: S3Peer, tmp_path: Path) -> None:
    slow_down = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>'
    with FaultProxy(s3_peer.endpoint) as proxy:
        source = s3_source(s3_peer, proxy)
        proxy.add_fault(method="GET", path=source.big_path, status=503, body=slow_down, times=2)
        proxy.add_fault(method="GET", path=source.big_path, status=429, headers={"Retry-After": "1"}, times=1)
        result = source.cli(tmp_path)
        assert_ok(result)
        gets = source.big_gets()
    assert_model(tmp_path)
    assert [r.status for r in gets] == [503, 503, 429, 206], [r.status for r in gets]
    # Throttling waits at least `throttle_delay` (1 s) times a jitter in [0.5, 1.5): never a tight loop. (obstore
    # does not expose response headers on errors, so an object store's Retry-After cannot be read.)
    assert min(_gaps(gets)) >= 0.45, _gaps(gets)


def test_hub_throttling_honours_retry_after(hub_peer: HubEmulator, tmp_path: Path) -> None:
    with FaultProxy(hub_peer.endpoint) as proxy:
        source = hub_source(hub_peer, proxy)
        proxy.add_fault(method="GET", path=source.big_path, status=429, headers={"Retry-After": "2"}, times=1)
        proxy.add_fault(method="GET", path=source.big_path, status=503, headers={"Retry-After": "1"}, times=1)
        result = source.cli(tmp_path)
        assert_ok(result)
        gets = source.big_gets()
    assert_model(tmp_path)
    assert [r.status for r in gets][:2] == [429, 503] and gets[-1].status in (200, 206)
    gaps = _gaps(gets)
    assert gaps[0] >= 1.95 and gaps[1] >= 0.95, gaps  # Retry-After: 2, then Retry-After: 1


def test_hub_retry_after_is_capped(hub_peer: HubEmulator, tmp_path: Path) -> None:
    """A Retry-After of an hour is honoured only up to `retry_after_cap` (30 s by default; 1 s here, in process)."""
    import asyncio

    from runtime.download.service import DownloadRequest, execute, prepare
    from runtime.download.transfer import TransferSettings

    with FaultProxy(hub_peer.endpoint) as proxy:
        source = hub_source(hub_peer, proxy)
        proxy.add_fault(method="GET", path=source.big_path, status=429, headers={"Retry-After": "3600"}, times=1)
        request = DownloadRequest(
            source=source.uri,
            local_dir=tmp_path,
            config={"hf_endpoint": proxy.url, "hf_token": HF_TOKEN},
            transfer=TransferSettings(retry_after_cap=1.0),
        )
        started = time.monotonic()
        asyncio.run(execute(prepare(request, env={})))
        assert time.monotonic() - started < 15
        gaps = _gaps(source.big_gets())
    assert_model(tmp_path)
    assert 0.95 <= gaps[0] < 5, gaps


# ------------------------------------------------------------------------------------------------ dropped connections


@pytest.mark.parametrize("mode", ["close", "reset"])
def test_a_connection_dropped_mid_file_resumes_from_the_byte_reached(
    source: Source, tmp_path: Path, mode: DropMode
) -> None:
    cut = 2 * MIB + 512 * 1024
    source.proxy.add_fault(method="GET", path=source.big_path, drop_after_bytes=cut, drop_mode=mode)
    result = source.cli(tmp_path)  # one 32 MiB part: the whole 6 MiB file in one request
    assert_ok(result)
    assert_model(tmp_path)
    gets = source.big_gets()
    assert len(gets) == 2 and gets[0].body_bytes_sent == cut, [(r.range, r.body_bytes_sent) for r in gets]
    resumed_at = int((gets[1].range or "").removeprefix("bytes=").split("-")[0])
    assert cut - MIB < resumed_at <= cut  # from the byte reached (less what was still in the client's buffer)
    assert body_bytes(gets) <= len(MODEL[BIG]) + MIB  # not the whole file again


# ------------------------------------------------------------------------------------------------ DNS


@pytest.mark.parametrize("kind", ["s3", "hub"])
def test_a_host_that_does_not_resolve_fails_fast_and_names_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    endpoint = "http://nonexistent.invalid:9000"
    with FaultProxy("http://127.0.0.1:9") as unused:  # only to build the Source; never contacted
        if kind == "s3":
            source = s3_source(request.getfixturevalue("s3_peer"), unused, endpoint=endpoint)
        else:
            source = hub_source(request.getfixturevalue("hub_peer"), unused, endpoint=endpoint)
        result = source.cli(tmp_path)
    line = error_line(result)
    assert "nonexistent.invalid" in line and "resolve" in line, line
    assert result.seconds < DNS_DEADLINE
    assert not final_files(tmp_path)


# ------------------------------------------------------------------------------------------------ disk full


def test_a_full_disk_fails_clearly_keeps_what_is_resumable_and_resumes_once_there_is_room(
    source: Source, small_tmpfs: Path
) -> None:
    target = small_tmpfs / "model"
    args = ("--part-size-mib", "1", "--max-workers", "1")  # parts in order: the disk fills up part-way through
    failed = source.cli(target, *args)
    line = error_line(failed)
    assert "no space left on device" in line and str(target) in line, line
    assert BIG not in final_files(target)
    # Decided behaviour: the parts that were written stay, with their resume record, so that a re-run after
    # freeing space (or growing the volume) fetches only the rest; a partial file with no complete part is deleted.
    (partial,) = partials(target, BIG)
    record = json.loads(partial.with_name(partial.name + ".json").read_text())
    assert 1 <= len(record["done"]) < 7
    assert not [p for p in target.rglob("*.tmp")]  # no stray temporary files from failed metadata writes

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    source.proxy.reset_records()
    rerun = source.cli(target, *args)
    assert_ok(rerun)
    assert_model(target)
    fetched = body_bytes(source.big_gets())
    assert fetched <= len(MODEL[BIG]) - len(record["done"]) * MIB, fetched


def test_a_full_disk_then_a_download_into_a_bigger_directory_succeeds(
    s3_peer: S3Peer, small_tmpfs: Path, tmp_path: Path
) -> None:
    with FaultProxy(s3_peer.endpoint) as proxy:
        source = s3_source(s3_peer, proxy)
        assert "no space left on device" in error_line(source.cli(small_tmpfs / "model"))
        assert BIG not in final_files(small_tmpfs / "model")
        assert not partials(small_tmpfs / "model", BIG)  # one part, nothing resumable
        assert_ok(source.cli(tmp_path / "model"))
    assert_model(tmp_path / "model")


# ------------------------------------------------------------------------------------------------ permissions


# uid/gid 65534 (nobody) without root's DAC override. It keeps CAP_DAC_READ_SEARCH (read and search only, never
# write) so that it can still run an interpreter installed under root's 0700 home; writing stays denied.
AS_NOBODY = (
    "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
    "--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search", "--",
)  # fmt: skip


@pytest.mark.parametrize("how", ["other-uid", "read-only-mount"])
def test_a_target_that_cannot_be_written_fails_clearly(source: Source, how: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: setuid and mount")
    parent = Path(tempfile.mkdtemp(prefix="airuntime-perm-"))
    parent.chmod(0o755)
    target = parent / "model"
    target.mkdir(mode=0o755)  # owned by root
    mounted = False
    try:
        if how == "read-only-mount":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)], check=True)
            mounted = True
            result = source.cli(target)
            expected = "read-only file system"
        else:
            if shutil.which("setpriv") is None:
                pytest.skip("setpriv (util-linux) is not installed")
            result = source.cli(target, wrapper=AS_NOBODY)
            expected = "permission denied"
        line = error_line(result)
        assert expected in line and str(target) in line, line
        assert not [p for p in target.rglob("*") if p.is_file()]
        assert not source.proxy.records  # refused before any byte was fetched
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=False)
        target.rmdir()
        parent.rmdir()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-m", "e2e", "-q"]))
