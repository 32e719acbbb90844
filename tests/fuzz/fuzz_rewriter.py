"""Coverage-guided fuzzing of the exposition rewriter with atheris (libFuzzer): same invariants as the property tests.

Each input is split by its first byte into a chunking seed and a payload; `tests.fuzz.invariants.check_rewrite` feeds
the payload whole and in chunks, in raw and unified-only modes, and raises on any broken promise, which libFuzzer
reports as a crash (and saves the input as `crash-*`). Run from the repo root:

    .venv/bin/python tests/fuzz/fuzz_rewriter.py /tmp/fuzz-corpus tests/fuzz/corpus -max_total_time=600

tests/unit/test_rewriter_fuzz.py runs it for a bounded time under `pytest -m e2e`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["runtime", "tests.fuzz"]):
    from runtime.metrics.rewriter import RewriteCache
    from tests.fuzz.invariants import check_rewrite

_CACHE = RewriteCache(limit=10_000)  # shared across inputs, as the scraper shares it across scrapes


def test_one_input(data: bytes) -> None:
    if not data:
        return
    seed, payload = data[0], data[1:]
    cuts = [seed * (index + 1) % (len(payload) + 1) for index in range(seed % 7)]
    check_rewrite(payload, cuts, cache=_CACHE)
    check_rewrite(payload, cuts, keep_raw=False)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
