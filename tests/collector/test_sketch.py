"""The quantile sketch (z4j_collector/sketch.py) against numpy on the same values.

Stated bound: the sketch's quantile q is within ALPHA (1 %) relative error of
numpy.percentile(values, 100 q, method="lower"), for any distribution; merging
sketches equals the sketch of the union (same bound, same buckets)."""

from __future__ import annotations

import numpy as np
import pytest

from z4j_collector.sketch import ALPHA, Sketch

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def _distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261121)
    n = 20_000
    return {
        "uniform": rng.uniform(0.001, 2.0, n),
        "normal": np.abs(rng.normal(1.5, 0.4, n)) + 1e-4,
        "exponential": rng.exponential(0.2, n),
        "lognormal_heavy": rng.lognormal(-3.0, 2.5, n),
        "pareto_heavy": (rng.pareto(1.1, n) + 1) * 0.01,
        "bimodal": np.concatenate([rng.normal(0.01, 0.001, n // 2).clip(1e-5), rng.normal(30.0, 3.0, n // 2)]),
        "constant": np.full(1000, 0.25),
        "tiny_and_zero": np.concatenate([np.zeros(100), rng.uniform(1e-5, 1e-3, 900)]),
    }


def _check(sketch: Sketch, values: np.ndarray) -> None:
    assert sketch.count == len(values)
    for q in QS:
        truth = float(np.percentile(values, q * 100, method="lower"))
        got = sketch.quantile(q)
        assert got is not None
        if truth <= 1e-6:
            assert got <= 1e-6 * (1 + ALPHA), (q, got, truth)
        else:
            assert abs(got - truth) <= ALPHA * truth + 1e-12, (q, got, truth, abs(got - truth) / truth)


@pytest.mark.parametrize("name", list(_distributions()))
def test_quantiles_within_bound(name: str) -> None:
    values = _distributions()[name]
    sketch = Sketch()
    sketch.add_many(values.tolist())
    _check(sketch, values)


@pytest.mark.parametrize("name", ["lognormal_heavy", "pareto_heavy", "bimodal"])
def test_merge_equals_union(name: str) -> None:
    values = _distributions()[name]
    parts = np.array_split(values, 7)
    merged = Sketch()
    for part in parts:
        piece = Sketch()
        piece.add_many(part.tolist())
        merged.merge(Sketch.from_text(piece.to_text()))  # through storage, as rollups are
    whole = Sketch()
    whole.add_many(values.tolist())
    assert merged.buckets == whole.buckets and merged.zeros == whole.zeros
    _check(merged, values)


def test_round_trip_and_edges() -> None:
    empty = Sketch()
    assert empty.quantile(0.5) is None
    assert Sketch.from_text(empty.to_text()).count == 0
    one = Sketch()
    one.add(3.2)
    assert one.quantile(0.99) == pytest.approx(3.2, rel=ALPHA)
    odd = Sketch()
    for v in (float("nan"), float("inf"), -1.0, 0.0, 1.0):
        odd.add(v)
    assert odd.count == 3 and odd.quantile(0.0) == 0.0 and odd.quantile(1.0) == pytest.approx(1.0, rel=ALPHA)
    text = odd.to_text()
    assert Sketch.from_text(text).to_text() == text
    with pytest.raises(ValueError):
        odd.quantile(1.5)
