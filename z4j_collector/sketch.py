"""A mergeable quantile sketch with a relative-error guarantee (DDSketch's idea).

A positive value ``x`` goes to bucket ``i = ceil(log(x) / log(gamma))`` with
``gamma = (1 + alpha) / (1 - alpha)``; bucket ``i`` covers ``(gamma**(i-1),
gamma**i]`` and answers with ``2 * gamma**i / (gamma + 1)``, which is within a
relative error ``alpha`` of every value in it. A quantile is the answer of
the bucket holding the value of that rank (the lower rank ``floor(q * (n-1))``,
like ``numpy.percentile(method="lower")``), so

    |answer - true value at that rank| <= alpha * true value

for every distribution, heavy tails included. With ``alpha = 0.01``: p50, p95
and p99 within 1 %. Values at or below ``MIN_VALUE`` (1 µs; zero and negative
runtimes) are counted in a zero bucket answered as 0.

Merging two sketches adds their bucket counts, which is exactly the sketch of
the union of their values: minute rollups merge into hours and days with no
further loss. Runtimes from 1 µs to 10 days need at most ~1,400 buckets; a
busy task typically fills a few hundred. Serialized as compact JSON text
(``{"n":…, "z":…, "b":[[first_index, c0, c1, …], …]}``: runs of consecutive
buckets), readable and storable in a TEXT column on both databases.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

ALPHA = 0.01
MIN_VALUE = 1e-6
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
_INV_LOG_GAMMA = 1.0 / _LOG_GAMMA
_ceil = math.ceil
_log = math.log
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Sketch:
    __slots__ = ("buckets", "zeros", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    # ---------------------------------------------------------- updates

    def add(self, value: float) -> None:
        if value != value or value in (math.inf, -math.inf):  # NaN / inf: not a runtime
            return
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value <= MIN_VALUE:
            self.zeros += 1
            return
        index = _ceil(_log(value) * _INV_LOG_GAMMA)
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1

    def add_many(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def merge(self, other: Sketch) -> Sketch:
        """Add ``other``'s values to this sketch (in place); returns self."""
        buckets = self.buckets
        for index, n in other.buckets.items():
            buckets[index] = buckets.get(index, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    # ---------------------------------------------------------- reads

    def quantile(self, q: float) -> float | None:
        """The value at rank ``floor(q * (count - 1))``, within ALPHA relative error; None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, got {q!r}")
        if self.count == 0:
            return None
        rank = int(q * (self.count - 1))
        if rank < self.zeros:
            return 0.0
        seen = self.zeros
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > rank:
                value = 2.0 * math.exp(index * _LOG_GAMMA) / (_GAMMA + 1.0)
                # Never outside what was seen (helps a single value read back exactly-ish).
                return min(max(value, self.min), self.max)
        return self.max

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        return [self.quantile(q) for q in qs]

    # ---------------------------------------------------------- storage

    def to_text(self) -> str:
        runs: list[list[float]] = []
        previous = None
        for index in sorted(self.buckets):
            if previous is not None and index == previous + 1:
                runs[-1].append(self.buckets[index])
            else:
                runs.append([index, self.buckets[index]])
            previous = index
        doc = {"a": ALPHA, "n": self.count, "z": self.zeros, "s": self.total, "b": runs}
        if self.count:
            doc["lo"], doc["hi"] = self.min, self.max
        return _encode(doc).decode()

    @classmethod
    def from_text(cls, text: str | bytes | None) -> Sketch:
        sketch = cls()
        if not text:
            return sketch
        doc = _decode(text)
        if doc.get("a", ALPHA) != ALPHA:
            raise ValueError(f"sketch written with alpha {doc.get('a')}, this build uses {ALPHA}")
        sketch.count = int(doc.get("n", 0))
        sketch.zeros = int(doc.get("z", 0))
        sketch.total = float(doc.get("s", 0.0))
        if sketch.count:
            sketch.min, sketch.max = float(doc["lo"]), float(doc["hi"])
        buckets = sketch.buckets
        for run in doc.get("b", ()):
            first = int(run[0])
            for offset, n in enumerate(run[1:]):
                buckets[first + offset] = int(n)
        return sketch

    def __len__(self) -> int:
        return self.count
