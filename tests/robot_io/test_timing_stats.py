"""D6: the deploy runner's timing statistics use constant memory and agree with exact
percentiles to the histogram's resolution."""

from __future__ import annotations

import numpy as np
import pytest

from safetwin.robot_io.timing_stats import MsHistogram


def test_percentiles_match_numpy_within_one_bin():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10.0, 0.3, 20_000), rng.uniform(10, 40, 200)])
    hist = MsHistogram()
    for v in values:
        hist.add(v)
    stats = hist.stats()
    assert stats["n"] == len(values) == len(hist)
    for q, key in ((50, "p50"), (99, "p99")):
        exact = np.percentile(values, q, method="inverted_cdf")
        assert exact <= stats[key] <= exact + hist.resolution + 1e-12
    assert stats["max"] == pytest.approx(values.max()) and stats["mean"] == pytest.approx(values.mean())
    assert hist.last == values[-1]


def test_overflow_reads_the_exact_maximum_and_memory_is_constant():
    hist = MsHistogram(range_ms=50.0)
    size = hist._counts.nbytes
    for v in [1.0] * 98 + [120.0, 900.0]:
        hist.add(v)
    assert hist.percentile(99) == 900.0  # the 99th value (120) is past the range: read as the maximum
    assert hist.percentile(100) == 900.0 and hist.stats()["p50"] == pytest.approx(1.01)
    for _ in range(10_000):
        hist.add(2.0)
    assert hist._counts.nbytes == size  # no growth with the number of samples


def test_empty_and_invalid():
    assert MsHistogram().stats() == {"p50": None, "p99": None, "max": None, "mean": None, "n": 0}
    hist = MsHistogram()
    hist.add(float("nan"))
    assert hist.stats()["n"] == 1 and hist.stats()["mean"] is None
    with pytest.raises(ValueError, match="resolution_ms"):
        MsHistogram(resolution_ms=0.0)
