"""bench/bench_lif.py on a tiny shape: its counts of kept bits and of differing spikes are
numbers users read, so they are checked here (its timings are not)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_lif  # noqa: E402
import _util  # noqa: E402


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_lif, "SHAPES", {"tiny-T4": (4, 2, 8, 4, 4)})
    monkeypatch.setattr(_util, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(_util, "start", lambda *a, **k: {})
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_benchmark_rows_count_bits_and_spikes(tiny, capsys):
    rows = bench_lif.main(["--rounds", "1", "--no-compile", "--settle", "0"])
    by_cfg = {row["config"]: row for row in rows}
    # 2 bits for the rectangular/detached neuron, the input itself for ATan; the plain
    # loop keeps h and the surrogate's input per step (fp32 each), plus s for ATan
    assert by_cfg["tt-snn"]["bits_saved[snnops]"] == 2
    assert by_cfg["atan"]["bits_saved[snnops]"] == 32
    assert by_cfg["tt-snn"]["bits_saved[torch loop]"] == 64
    assert by_cfg["atan"]["bits_saved[torch loop]"] == 96
    for row in rows:
        for key, n in row.items():
            if key.startswith("spikes_differing["):
                assert n == 0, key
        assert row["speedup_vs[torch loop]"] > 0 and row["bandwidth_vs_copy"] > 0
        assert row["bandwidth_vs_copy_moved"] > 0 and row["copy_moved_GBps"] > 0
    out = capsys.readouterr().out
    assert "bits kept for backward per neuron-step" in out
    assert "forward spikes differing from snnops'" in out


def test_differing_spikes_are_counted(tiny):
    cfg = bench_lif.CONFIGS["tt-snn"]
    impls, twins = bench_lif.implementations(cfg, with_compile=False)
    impls["wrong"] = lambda x: (torch.zeros_like(x), None)
    x = torch.full((3, 5), 0.7)  # fires at every step
    assert bench_lif.spikes_differing(impls, twins, x)["wrong"] == 15
