"""A KV-event publisher speaking vLLM 0.32's wire protocol, for the fast relay tests (the e2e suite uses real vLLM).

Written from what vLLM 0.32 does on the wire (shared/research/kthena-kv-events.md, section 7): a PUB socket sends
`[topic, seq (8 bytes big-endian, from 0), payload]`; a ROUTER replay socket answers `[id, b"", start_seq]` with
`[id, b"", topic, seq, payload]` for every buffered batch from start_seq on, then `[id, b"", b"", END_SEQ, b""]`;
a request of another shape gets nothing. It binds or connects its PUB socket as told. Everything runs on one thread
that owns the sockets; tests talk to it through `publish`, `send_raw`, `restart`, `forget_before`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

END_SEQ = b"\xff" * 8


class KvPublisher:
    def __init__(
        self, endpoint: str, replay_endpoint: str | None, *, bind: bool = True, topic: str = "kv-events"
    ) -> None:
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.bind = bind
        self.topic = topic.encode()
        self.next_seq = 0
        self.buffer: deque[tuple[int, bytes]] = deque(maxlen=10_000)
        self.replay_requests = 0
        self._commands: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], threading.Event | None]] = queue.Queue()
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kv-publisher")
        self._context = zmq.Context()
        self._pub: zmq.Socket[bytes] | None = None
        self._router: zmq.Socket[bytes] | None = None

    def __enter__(self) -> KvPublisher:
        self._open()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join(10)
        self._close()
        self._context.term()

    # ------------------------------------------------------------------------------------------ test API

    def publish(self, payload: bytes) -> int:
        """Publish a batch with the next sequence number (buffered for replay); returns that number."""
        seq = self.next_seq
        self.next_seq += 1
        self._call(self._send, seq, payload)
        return seq

    def publish_events(self, events: list[Any], ts: float = 1.0, rank: int = 0) -> int:
        return self.publish(msgspec.msgpack.encode([ts, events, rank]))

    def skip(self, payload: bytes) -> int:
        """Buffer a batch for replay without sending it live (a batch the subscriber missed)."""
        seq = self.next_seq
        self.next_seq += 1
        self._call(self.buffer.append, (seq, payload))
        return seq

    def send_raw(self, frames: list[bytes]) -> None:
        self._call(self._send_frames, frames)

    def restart(self) -> None:
        """A new engine process: sockets closed and opened again, sequence numbers from 0, an empty buffer."""
        self._call(self._restart)

    def forget_before(self, seq: int) -> None:
        """Drop buffered batches before `seq` (a replay buffer that overflowed)."""
        self._call(self._forget, seq)

    # ------------------------------------------------------------------------------------------ the thread

    def _call(self, function: Callable[..., Any], *args: Any) -> None:
        done = threading.Event()
        self._commands.put((function, args, done))
        if not done.wait(10):
            raise TimeoutError("the publisher thread did not run the command")

    def _loop(self) -> None:
        while self._running:
            try:
                function, args, done = self._commands.get(timeout=0.005)
                function(*args)
                if done is not None:
                    done.set()
            except queue.Empty:
                pass
            if self._router is not None and self._router.poll(0):
                self._serve_replay()

    def _open(self) -> None:
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        if self.bind:
            _bind(self._pub, self.endpoint)
        else:
            self._pub.connect(self.endpoint)
        if self.replay_endpoint:
            self._router = self._context.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            _bind(self._router, self.replay_endpoint)

    def _close(self) -> None:
        for sock in (self._pub, self._router):
            if sock is not None:
                sock.close(0)
        self._pub = self._router = None

    def _restart(self) -> None:
        self._close()
        self.next_seq = 0
        self.buffer.clear()
        self._open()

    def _forget(self, seq: int) -> None:
        while self.buffer and self.buffer[0][0] < seq:
            self.buffer.popleft()

    def _send(self, seq: int, payload: bytes) -> None:
        assert self._pub is not None
        self._pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
        self.buffer.append((seq, payload))

    def _send_frames(self, frames: list[bytes]) -> None:
        assert self._pub is not None
        self._pub.send_multipart(frames)

    def _serve_replay(self) -> None:
        assert self._router is not None
        frames = self._router.recv_multipart()
        self.replay_requests += 1
        if len(frames) != 3:
            return  # vLLM logs "Invalid replay request" and answers nothing
        client, _, start = frames
        start_seq = int.from_bytes(start, "big")
        for seq, payload in list(self.buffer):
            if seq >= start_seq:
                self._router.send_multipart([client, b"", self.topic, seq.to_bytes(8, "big"), payload])
        self._router.send_multipart([client, b"", b"", END_SEQ, b""])


def _bind(sock: zmq.Socket[bytes], endpoint: str) -> None:
    """Bind, waiting for a just-closed socket's port: ZeroMQ releases it on its I/O thread, a moment later."""
    deadline = time.monotonic() + 5
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def stored(hashes: list[int], tokens: list[int], **extra: Any) -> dict[str, Any]:
    """A BlockStored event as vLLM 0.32 encodes it (a tagged map)."""
    size = len(tokens) // len(hashes)
    event = {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": None, "token_ids": tokens}
    event |= {"block_size": size, "lora_id": None, "medium": "GPU", "lora_name": None}
    event |= {"extra_keys": [None] * len(hashes), "group_idx": 0, "kv_cache_spec_kind": "full_attention"}
    return event | extra


def removed(hashes: list[int], **extra: Any) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": hashes, "medium": "GPU", "group_idx": 0} | extra


CLEARED = {"type": "AllBlocksCleared"}
