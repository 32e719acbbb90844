"""Self-test of the S3 test peers: SeaweedFS (`seaweedfs.py`) and the fault proxy (`fault_proxy.py`), via obstore.

Run by hand (not collected by the default run: the file name does not match test_*.py):

    python tests/peers/seaweedfs.py install
    .venv/bin/python -m pytest -q -m e2e tests/peers/selftest_seaweedfs.py

It also pins down the obstore behaviour the downloader relies on (exception classes, transparent resume).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import seaweedfs
from tests.peers.fault_proxy import FaultProxy

obstore = pytest.importorskip("obstore")
from obstore.exceptions import GenericError, PermissionDeniedError  # noqa: E402

pytestmark = pytest.mark.e2e

BUCKET = "models"
MiB = 1024 * 1024
BIG = 20 * MiB


@pytest.fixture(scope="module")
def s3() -> Iterator[seaweedfs.S3Peer]:
    if not seaweedfs.is_installed():
        pytest.skip("weed not installed: python tests/peers/seaweedfs.py install")
    with seaweedfs.running_seaweedfs(buckets=(BUCKET, "other")) as peer:
        yield peer


@pytest.fixture(scope="module")
def big() -> bytes:
    return os.urandom(BIG)


@pytest.fixture(scope="module")
def seeded(s3: seaweedfs.S3Peer, big: bytes) -> dict[str, str]:
    """Keys -> ETags: a small single-part object and a 20 MiB multipart one."""
    return {
        "m/small.json": s3.put_object(BUCKET, "m/small.json", b'{"hello": "world"}\n'),
        "m/big.bin": s3.put_object(BUCKET, "m/big.bin", big, multipart=True),
    }


@pytest.fixture
def proxy(s3: seaweedfs.S3Peer) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint) as p:
        yield p


def _no_retry(s3: seaweedfs.S3Peer, endpoint: str, **client_options: Any) -> Any:
    return s3.store(BUCKET, endpoint=endpoint, retry_config={"max_retries": 0}, client_options=client_options)


def test_startup_and_memory(s3: seaweedfs.S3Peer) -> None:
    assert s3.started_seconds < 10
    rss = s3.rss_bytes()
    assert rss is not None and rss < 600 * MiB
    assert sorted(s3.buckets) == ["models", "other"]


def test_etags_single_and_multipart(s3: seaweedfs.S3Peer, seeded: dict[str, str], big: bytes, tmp_path: Path) -> None:
    assert seeded["m/small.json"] == seaweedfs.md5_etag(b'{"hello": "world"}\n')
    assert seeded["m/big.bin"] == seaweedfs.multipart_etag(big) and seeded["m/big.bin"].endswith('-4"')
    meta = s3.head(BUCKET, "m/big.bin")
    assert meta["size"] == BIG and meta["e_tag"] == seeded["m/big.bin"]
    # put_file: single part by default, multipart with a chosen part size on request.
    path = tmp_path / "f.bin"
    path.write_bytes(big[: 7 * MiB])
    assert s3.put_file(BUCKET, "f/one.bin", path) == seaweedfs.md5_etag(big[: 7 * MiB])
    etag = s3.put_file(BUCKET, "f/parts.bin", path, multipart=True, chunk_size=5 * MiB)
    assert etag == seaweedfs.multipart_etag(big[: 7 * MiB], 5 * MiB) and etag.endswith('-2"')
    # obstore's default for a plain put above chunk_size (5 MiB) is multipart, also for bytes.
    result = obstore.put(s3.store(BUCKET), "f/default.bin", big[: 6 * MiB])
    assert result["e_tag"].endswith('-2"')
    assert s3.get(BUCKET, "f/one.bin") == big[: 7 * MiB]


def test_listing(s3: seaweedfs.S3Peer, seeded: dict[str, str]) -> None:
    assert s3.list_keys(BUCKET, "m/") == ["m/big.bin", "m/small.json"]
    assert s3.list_keys(BUCKET, "m/sm") == ["m/small.json"]  # a plain string prefix in the helper
    store = s3.store(BUCKET)
    # obstore's prefix is whole path segments: "m/sm" lists nothing, "m" == "m/".
    assert obstore.list(store, prefix="m/sm").collect() == []
    assert {m["path"] for m in obstore.list(store, prefix="m").collect()} == {"m/big.bin", "m/small.json"}
    metas = {m["path"]: m for m in obstore.list(store, prefix="m/").collect()}
    assert metas["m/big.bin"]["size"] == BIG and metas["m/big.bin"]["e_tag"] == seeded["m/big.bin"]
    # A prefix with nothing under it: an empty listing (200, KeyCount 0), not an error.
    assert obstore.list(store, prefix="nothing/here").collect() == []
    raw = s3.request("GET", BUCKET, query="list-type=2&prefix=nothing/")
    assert raw.status == 200 and b"<KeyCount>0</KeyCount>" in raw.body
    # A missing bucket: 404 NoSuchBucket; obstore's list raises GenericError (not FileNotFoundError).
    with pytest.raises(GenericError, match="NoSuchBucket"):
        obstore.list(s3.store("no-such-bucket")).collect()
    assert s3.request("GET", "no-such-bucket", query="list-type=2").status == 404


def test_missing_key_and_bucket(s3: seaweedfs.S3Peer, seeded: dict[str, str]) -> None:
    with pytest.raises(FileNotFoundError, match="NoSuchKey"):
        obstore.get(s3.store(BUCKET), "m/missing.bin")
    with pytest.raises(FileNotFoundError):
        obstore.head(s3.store(BUCKET), "m/missing.bin")  # HEAD: no body, so no error code in the message
    with pytest.raises(FileNotFoundError, match="NoSuchBucket"):
        obstore.get(s3.store("no-such-bucket"), "m/small.json")


def test_wrong_credentials_403(s3: seaweedfs.S3Peer, seeded: dict[str, str]) -> None:
    bad = s3.store(BUCKET, secret_key="wrong-secret")
    with pytest.raises(PermissionDeniedError, match="SignatureDoesNotMatch"):
        obstore.get(bad, "m/small.json")
    with pytest.raises(PermissionDeniedError):
        obstore.head(bad, "m/small.json")
    with pytest.raises(GenericError, match="403 Forbidden"):  # list errors are all GenericError
        obstore.list(bad).collect()
    unknown = s3.store(BUCKET, access_key="nobody")
    with pytest.raises(PermissionDeniedError, match="InvalidAccessKeyId"):
        obstore.get(unknown, "m/small.json")
    raw = s3.request("GET", BUCKET, "m/small.json", secret_key="wrong-secret")
    assert raw.status == 403 and b"SignatureDoesNotMatch" in raw.body


def test_ranges_direct(s3: seaweedfs.S3Peer, seeded: dict[str, str], big: bytes) -> None:
    store = s3.store(BUCKET)
    assert bytes(obstore.get_range(store, "m/big.bin", start=10, end=20)) == big[10:20]
    parts = obstore.get_ranges(store, "m/big.bin", starts=[0, 8 * MiB], ends=[100, 8 * MiB + 100])
    assert [bytes(p) for p in parts] == [big[:100], big[8 * MiB : 8 * MiB + 100]]
    result = obstore.get(store, "m/big.bin", options={"range": {"offset": BIG - 5}})
    assert result.range == (BIG - 5, BIG) and bytes(result.bytes()) == big[-5:]
    assert result.meta["size"] == BIG and result.meta["e_tag"] == seeded["m/big.bin"]
    assert bytes(obstore.get(store, "m/big.bin", options={"range": {"suffix": 3}}).bytes()) == big[-3:]
    with pytest.raises(GenericError, match="416"):
        obstore.get_range(store, "m/big.bin", start=BIG + 1, end=BIG + 10)
    with pytest.raises(obstore.exceptions.PreconditionError):
        obstore.get(store, "m/big.bin", options={"if_match": '"not-the-etag"'})
    with pytest.raises(obstore.exceptions.NotModifiedError):
        obstore.get(store, "m/big.bin", options={"if_none_match": seeded["m/big.bin"]})


def test_proxy_passthrough(s3: seaweedfs.S3Peer, proxy: FaultProxy, seeded: dict[str, str], big: bytes) -> None:
    store = s3.store(BUCKET, endpoint=proxy.url)  # the client signs for the proxy's Host; the proxy keeps it
    assert obstore.head(store, "m/big.bin")["size"] == BIG
    assert hashlib.md5(obstore.get(store, "m/big.bin").bytes()).digest() == hashlib.md5(big).digest()
    assert bytes(obstore.get_range(store, "m/big.bin", start=MiB, end=MiB + 10)) == big[MiB : MiB + 10]
    etag = obstore.put(store, "p/through-proxy.bin", big[: 11 * MiB])["e_tag"]  # multipart, 3 parts
    assert etag == seaweedfs.multipart_etag(big[: 11 * MiB])
    assert proxy.count("HEAD", "/models/m/big.bin") == 1
    assert proxy.count("PUT", "/models/p/through-proxy.bin") == 3  # UploadPart x3 (POSTs create/complete)
    ranged = [r for r in proxy.matching("GET", "/models/m/big.bin") if r.range]
    assert ranged[0].range == f"bytes={MiB}-{MiB + 9}"


def test_proxy_rewriting_host_breaks_sigv4(s3: seaweedfs.S3Peer, seeded: dict[str, str]) -> None:
    with FaultProxy(s3.endpoint, rewrite_host=True) as proxy, pytest.raises(PermissionDeniedError):
        obstore.get(s3.store(BUCKET, endpoint=proxy.url), "m/small.json")


def test_drop_resumed_by_obstore(s3: seaweedfs.S3Peer, proxy: FaultProxy, seeded: dict[str, str], big: bytes) -> None:
    """The first GET is cut after 1 MiB; obstore itself resumes with a Range GET from where the body broke."""
    fault = proxy.add_fault(method="GET", path="/models/m/big.bin", drop_after_bytes=MiB)
    data = obstore.get(s3.store(BUCKET, endpoint=proxy.url), "m/big.bin").bytes()
    assert bytes(data) == big
    assert fault.applied == 1
    first, second = proxy.matching("GET", "/models/m/big.bin")
    assert first.fault and first.body_bytes_sent == MiB and not first.completed
    assert second.range == f"bytes={MiB}-{BIG - 1}" and second.status == 206 and second.completed


def test_drop_then_client_resume(s3: seaweedfs.S3Peer, proxy: FaultProxy, seeded: dict[str, str], big: bytes) -> None:
    """With obstore's retries off, the drop surfaces; a ranged GET from the bytes already had completes it."""
    proxy.add_fault(method="GET", path="/models/m/big.bin", drop_after_bytes=3 * MiB)
    store = _no_retry(s3, proxy.url)
    got = bytearray()
    with pytest.raises(GenericError, match="body error"):
        for chunk in obstore.get(store, "m/big.bin").stream(min_chunk_size=256 * 1024):
            got += chunk
    assert 0 < len(got) <= 3 * MiB and big.startswith(bytes(got))
    offset = len(got)
    rest = obstore.get(store, "m/big.bin", options={"range": {"offset": offset}, "if_match": seeded["m/big.bin"]})
    assert rest.range == (offset, BIG)
    got += rest.bytes()
    assert bytes(got) == big
    resumed = proxy.matching("GET", "/models/m/big.bin")[-1]
    assert resumed.range == f"bytes={offset}-" and resumed.headers["if-match"] == seeded["m/big.bin"]


def test_drop_every_time_gives_up(s3: seaweedfs.S3Peer, proxy: FaultProxy, seeded: dict[str, str]) -> None:
    proxy.add_fault(method="GET", path="/models/m/big.bin", drop_after_bytes=MiB, times=None)
    store = s3.store(BUCKET, endpoint=proxy.url, retry_config={"max_retries": 2})
    with pytest.raises(GenericError, match="request or response body error"):
        obstore.get(store, "m/big.bin").bytes()
    assert proxy.count("GET", "/models/m/big.bin") == 3  # the first try + 2 resumes


def test_status_faults_then_recover(s3: seaweedfs.S3Peer, proxy: FaultProxy, seeded: dict[str, str]) -> None:
    proxy.add_fault(status=503, times=2)
    assert bytes(obstore.get(s3.store(BUCKET, endpoint=proxy.url), "m/small.json").bytes()).startswith(b"{")
    assert [r.status for r in proxy.records] == [503, 503, 200]
    proxy.add_fault(status=500, times=1)
    with pytest.raises(GenericError, match="500 Internal Server Error"):
        obstore.head(_no_retry(s3, proxy.url), "m/small.json")


def test_stalls(s3: seaweedfs.S3Peer, proxy: FaultProxy, seeded: dict[str, str]) -> None:
    proxy.add_fault(path="/models/m/small.json", stall_seconds=2.0)
    started = time.monotonic()
    with pytest.raises(GenericError, match="error sending request"):
        obstore.get(_no_retry(s3, proxy.url, timeout="0.5s"), "m/small.json")
    assert time.monotonic() - started < 1.5
    proxy.add_fault(path="/models/m/big.bin", stall_seconds=2.0, stall_after_bytes=64 * 1024)
    with pytest.raises(GenericError, match="body error"):
        obstore.get(_no_retry(s3, proxy.url, read_timeout="0.5s"), "m/big.bin").bytes()


def test_resume_after_object_replaced_is_refused(s3: seaweedfs.S3Peer, proxy: FaultProxy) -> None:
    """obstore's resume GET carries no If-Match, but a changed ETag on the 206 makes it give up (no mixed bytes)."""
    old, new = os.urandom(6 * MiB), os.urandom(6 * MiB)
    s3.put_object(BUCKET, "r/replaced.bin", old)
    proxy.add_fault(path="/models/r/replaced.bin", stall_seconds=1.0, stall_after_bytes=MiB, drop_after_bytes=2 * MiB)
    replacer = threading.Timer(0.3, s3.put_object, args=(BUCKET, "r/replaced.bin", new))
    replacer.start()
    try:
        with pytest.raises(GenericError, match="body error"):
            obstore.get(s3.store(BUCKET, endpoint=proxy.url), "r/replaced.bin").bytes()
    finally:
        replacer.join()
    first, second = proxy.matching("GET", "/models/r/replaced.bin")
    assert first.body_bytes_sent == 2 * MiB and not first.completed
    assert second.range == f"bytes={2 * MiB}-{6 * MiB - 1}" and "if-match" not in second.headers
    assert second.status == 206 and not second.completed
