"""bench/bench_bn_lif.py and bench/bench_bn_add.py on a tiny shape: each row carries both
bandwidth ratios, against a copy of the input and against a copy moving as many bytes as
the op (their timings are not checked)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import _util  # noqa: E402
import bench_bn_add  # noqa: E402
import bench_bn_lif  # noqa: E402

TINY = {"tiny": (2, 2, 8, 4, 4)}


@pytest.fixture
def results(monkeypatch, tmp_path):
    monkeypatch.setattr(_util, "RESULTS_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bn_lif_rows_have_both_bandwidths(results, monkeypatch):
    monkeypatch.setattr(bench_bn_lif, "SHAPES", TINY)
    monkeypatch.setattr(_util, "start", lambda *a, **k: {})
    rows = bench_bn_lif.main(["--rounds", "1"])
    assert [row["shape"] for row in rows] == ["tiny"]
    for row in rows:
        assert row["bandwidth_vs_copy"] > 0 and row["bandwidth_vs_copy_moved"] > 0


def test_bn_add_rows_have_both_bandwidths(results, monkeypatch):
    monkeypatch.setattr(bench_bn_add, "SHAPES", TINY)
    runs = bench_bn_add.main(["--rounds", "1", "--threads", "1"])
    rows = runs[0]["rows"]
    assert [(row["shape"], row["residual"]) for row in rows] == [("tiny", True), ("tiny", False)]
    for row in rows:
        assert row["fwd+bwd_bandwidth_vs_copy"] > 0 and row["fwd+bwd_bandwidth_vs_copy_moved"] > 0
