"""A /health prober in its own process (so the test's threads cannot add GIL waits to what it measures): shared by
the engine-fault suite and the KV-event relay's flood test."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import urlsplit

PROBER = """
import http.client, json, sys, time
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
connection = http.client.HTTPConnection(host, port, timeout=5)
latencies, failures = [], []
sys.stdout.write("ready\\n"); sys.stdout.flush()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    if sys.stdin.readable() and select.select([sys.stdin], [], [], 0)[0]:
        break
    started = time.perf_counter()
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            failures.append(f"HTTP {response.status}")
    except OSError as exc:
        failures.append(repr(exc))
        connection.close()
        connection = http.client.HTTPConnection(host, port, timeout=5)
    latencies.append(time.perf_counter() - started)
    time.sleep(interval)
print(json.dumps({"latencies": latencies, "failures": failures}))
"""


class HealthProber:
    """GET /health over one keep-alive connection every `interval` seconds, from its own process (so the test's
    threads cannot add GIL waits to what it measures); stops when its stdin closes."""

    def __init__(self, base_url: str, interval: float = 0.005) -> None:
        parts = urlsplit(base_url)
        code = "import select\n" + PROBER
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, parts.hostname or "127.0.0.1", str(parts.port), str(interval)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        assert self._proc.stdout.readline().strip() == b"ready"
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def stop(self) -> None:
        stdout, _ = self._proc.communicate(b"stop\n", timeout=30)
        result = json.loads(stdout)
        self.latencies, self.failures = result["latencies"], result["failures"]

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return float(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))])
