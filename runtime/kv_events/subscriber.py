"""The ZeroMQ side of one data-parallel rank: the SUB socket, its connection events, and the replay client.

- SUB: connects to the engine's PUB (the engine binds `tcp://*:5557`), or binds for an engine that connects (its
  endpoint is a concrete address such as `tcp://127.0.0.1:5557`). Live messages are `[topic, seq (8 bytes
  big-endian), payload]`; the topic must equal the filter exactly when the filter is not empty (Kthena's rule).
- A monitor on the SUB socket reports every completed handshake: a new connection to a publisher, which may be a
  restarted engine whose sequence numbers begin again at 0.
- Replay (vLLM 0.32, SGLang 0.5): a DEALER sends `[b"", start_seq]` to the engine's ROUTER and gets
  `[b"", topic, seq, payload]` per buffered batch, then `[b"", b"", END_SEQ, b""]`. Older engines answered
  `[b"", seq, payload]` ... `[b"", END_SEQ, b""]` (or a bare `[b""]`); all are understood.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from runtime.kv_events.settings import RankEndpoint

END_SEQ = b"\xff" * 8
MAX_MESSAGE_BYTES = 64 << 20  # ZeroMQ drops a connection that sends a bigger message (memory protection)
RECEIVE_HWM = 50_000
REPLAY_IDLE_SECONDS = 5.0  # a replay that sends nothing for this long has failed
REPLAY_TOTAL_SECONDS = 120.0


class FrameError(ValueError):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ReplayError(Exception):
    """The replay socket did not answer in time (or answered nonsense): the caller falls back to a reset."""


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    payload: bytes


def parse_live(frames: list[bytes], topic: bytes) -> Message:
    """A live message, checked: three frames, the expected topic, an 8-byte sequence number."""
    if len(frames) != 3:
        raise FrameError("frames", f"a message of {len(frames)} frames (expected topic, seq, payload)")
    got_topic, seq, payload = frames
    if topic and got_topic != topic:
        raise FrameError("topic", f"topic {got_topic[:80]!r} (expected {topic!r})")
    if len(seq) != 8:
        raise FrameError("sequence", f"a sequence number of {len(seq)} bytes (expected 8)")
    return Message(int.from_bytes(seq, "big"), payload)


def parse_replayed(frames: list[bytes], topic: bytes) -> Message | None:
    """One replay answer after the DEALER's empty delimiter; None at the end marker."""
    if frames and frames[0] == b"":
        frames = frames[1:]
    if len(frames) <= 1 and not any(frames):
        return None
    if len(frames) == 3:
        got_topic, seq, payload = frames
        if seq == END_SEQ:
            return None
        if topic and got_topic != topic:
            raise FrameError("topic", f"replayed topic {got_topic[:80]!r} (expected {topic!r})")
    elif len(frames) == 2:
        seq, payload = frames
        if seq == END_SEQ:
            return None
    else:
        raise FrameError("frames", f"a replay answer of {len(frames)} frames")
    if len(seq) != 8:
        raise FrameError("sequence", f"a replayed sequence number of {len(seq)} bytes")
    return Message(int.from_bytes(seq, "big"), payload)


def _int_option(sock: zmq.Socket[bytes], option: int) -> int:
    value = sock.getsockopt(option)
    assert isinstance(value, int)
    return value


class RankSockets:
    """Plain (blocking-API) sockets used only with NOBLOCK, woken by the event loop watching their ZeroMQ file
    descriptors (registered once; pyzmq's asyncio poller registers them again on every wait, which cost more CPU
    than a small batch itself)."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], rank: RankEndpoint, topic: str, bind: bool) -> None:
        self.rank = rank
        self.topic = topic.encode()
        self.context = context
        self.sub = context.socket(zmq.SUB)
        for option, value in (
            (zmq.LINGER, 0),
            (zmq.RCVHWM, RECEIVE_HWM),
            (zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES),
            (zmq.RECONNECT_IVL_MAX, 2000),
            (zmq.HEARTBEAT_IVL, 5000),
            (zmq.HEARTBEAT_TIMEOUT, 15000),
        ):
            self.sub.setsockopt(option, value)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.monitor = self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        if bind:
            self.sub.bind(rank.endpoint)
        else:
            self.sub.connect(rank.endpoint)
        self.dealer: zmq.Socket[bytes] | None = None
        self._readable = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        for sock in (self.sub, self.monitor):
            self._loop.add_reader(_int_option(sock, zmq.FD), self._readable.set)

    def close(self) -> None:
        for watched in (self.sub, self.monitor):
            self._loop.remove_reader(_int_option(watched, zmq.FD))
        self.sub.disable_monitor()
        for sock in (self.monitor, self.sub, self.dealer):
            if sock is not None:
                sock.close(linger=0)

    async def wait(self, timeout: float | None = None) -> None:
        """Until a message or a connection event is queued (or `timeout` seconds passed). Reading ZMQ_EVENTS is
        what re-arms the edge-triggered descriptor, so it is read before every wait."""
        if _int_option(self.sub, zmq.EVENTS) & zmq.POLLIN or _int_option(self.monitor, zmq.EVENTS) & zmq.POLLIN:
            return
        self._readable.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._readable.wait()

    def new_connections(self) -> tuple[int, int]:
        """(handshakes, disconnects) reported since the last call; never blocks."""
        handshakes = disconnects = 0
        while True:
            try:
                raw = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return handshakes, disconnects
            event = parse_monitor_message(raw)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                handshakes += 1
            elif event == zmq.EVENT_DISCONNECTED:
                disconnects += 1

    def receive(self) -> list[bytes] | None:
        """One queued live message (its raw frames), or None when nothing is queued; never blocks."""
        try:
            return self.sub.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None

    async def replay(self, start: int) -> AsyncGenerator[Message, None]:
        """Every batch the engine still buffers from `start` on; ReplayError when it does not answer in time."""
        if self.rank.replay_endpoint is None:
            raise ReplayError("no replay endpoint")
        dealer = self._dealer()
        poller = zmq.asyncio.Poller()
        poller.register(dealer, zmq.POLLIN)
        deadline = time.monotonic() + REPLAY_TOTAL_SECONDS
        try:
            try:
                dealer.send_multipart([b"", start.to_bytes(8, "big")], zmq.NOBLOCK)
            except zmq.Again:
                raise ReplayError(f"cannot send to the replay socket {self.rank.replay_endpoint}") from None
            while True:
                try:
                    frames = dealer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    idle = min(REPLAY_IDLE_SECONDS, deadline - time.monotonic())
                    if idle <= 0 or not await poller.poll(int(idle * 1000)):
                        raise ReplayError(f"the replay socket {self.rank.replay_endpoint} stopped answering") from None
                    continue
                try:
                    message = parse_replayed(frames, self.topic)
                except FrameError as exc:
                    raise ReplayError(f"the replay socket {self.rank.replay_endpoint} answered {exc}") from None
                if message is None:
                    return
                yield message
        except BaseException:
            self._drop_dealer()  # late answers to this request must not reach the next one
            raise

    def _dealer(self) -> zmq.Socket[bytes]:
        if self.dealer is None:
            assert self.rank.replay_endpoint is not None
            self.dealer = self.context.socket(zmq.DEALER)
            self.dealer.setsockopt(zmq.LINGER, 0)
            self.dealer.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            self.dealer.connect(self.rank.replay_endpoint)
        return self.dealer

    def _drop_dealer(self) -> None:
        if self.dealer is not None:
            self.dealer.close(linger=0)
            self.dealer = None
