"""``snnops profile``: a tiny end-to-end run (table, --json, PNG chart), the
measurement helpers (peak memory, profiler time shares, target checks), and clear
errors with exit code 2."""
import json
import subprocess
import sys

import pytest
import torch

import snnops

from snnops import models
from snnops.cli import main as cli_main
from snnops.cli import profile as prof

TINY = ["--input-size", "3x8x8", "--timesteps", "2", "--batch-size", "2", "--repeats", "2", "--warmup", "0",
        "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_profile_tiny_run_writes_table_json_and_chart(tmp_path, capsys):
    out, chart = tmp_path / "p.json", tmp_path / "p.png"
    code = cli_main(["profile", *TINY, "--methods", "dense,ptt,htt,dense-ref,ptt-ref", "--ranks", "4",
                     "--json", str(out), "--chart", str(chart)])
    assert code == 0
    text = capsys.readouterr().out
    for label in ("dense", "PTT", "HTT", "dense (plain PyTorch)", "PTT (plain PyTorch)", "paper s",
                  "TT ranks", "targets on this machine"):
        assert label in text
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["dense", "ptt", "htt", "dense-ref", "ptt-ref"]
    assert result["config"]["ranks"] == [4] * 16 and result["config"]["threads"] == 1
    for r in rows.values():
        assert len(r["times_s"]) == 2 and r["time_s"] > 0
        assert r["peak_activation_bytes"] > 0 and r["saved_for_backward_bytes"] > 0
        assert set(r["shares"]) == {"conv", "lif", "bn", "bn_lif", "other"}
        assert sum(r["shares"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["shares"]["conv"] > 0 and r["shares"]["lif"] > 0 and r["shares"]["bn"] > 0
        # snnops fuses each block's first BN with the LIF after it; plain PyTorch has no such op
        assert (r["shares"]["bn_lif"] > 0) == (r["backend"] == "snnops")
    assert rows["dense"]["baseline"] == "dense" and rows["dense"]["reduction_pct"] == pytest.approx(0.0)
    assert rows["ptt-ref"]["baseline"] == "dense-ref"
    # (at this tiny size the dense peak is set by weight-sized gradients, not activations)
    assert rows["ptt"]["speedup_vs_plain"] > 0 and rows["ptt"]["memory_vs_plain"] > 1.0
    assert rows["htt"]["macs"] < rows["ptt"]["macs"] < rows["dense"]["macs"]
    assert rows["ptt"]["paper"]["time_s"] == 0.176 and rows["ptt-ref"]["paper"] is None
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("less time than snnops dense" in t["text"] for t in result["targets"])
    assert result["config"]["allocator"] == "system" and "system allocator" in text


def test_profile_system_allocator_measures_the_same_peak(tmp_path):
    """Both allocators report every allocation at its requested size, so the peak
    memory column does not depend on --allocator."""
    peaks = {}
    for alloc in ("cache", "system"):
        out = tmp_path / f"{alloc}.json"
        assert cli_main(["profile", *TINY, "--methods", "ptt", "--ranks", "4", "--allocator", alloc,
                         "--json", str(out), "--no-chart"]) == 0
        result = json.loads(out.read_text())
        assert result["config"]["allocator"] == alloc
        assert not snnops._native.caches_all_cpu_tensors()  # restored after the run
        peaks[alloc] = result["rows"][0]["peak_activation_bytes"]
    assert peaks["cache"] == peaks["system"]


def test_profile_settle_runs_untimed_steps_first(tmp_path, monkeypatch):
    """--settle N: N untimed steps of a method right before each timed one."""
    calls = []
    real_step = prof._step
    monkeypatch.setattr(prof, "_step", lambda model, x, y: (calls.append(id(model)), real_step(model, x, y))[1])
    out = tmp_path / "settle.json"
    assert cli_main(["profile", *TINY, "--methods", "ptt", "--ranks", "4", "--settle", "2", "--json", str(out),
                     "--no-chart"]) == 0
    assert json.loads(out.read_text())["config"]["settle"] == 2
    # --repeats 2, --warmup 0: each timed step after two untimed ones; then the one
    # profiled step of the time shares
    assert len(calls) == 2 * 3 + 1


def test_peak_memory_counts_saved_activations():
    """The replayed allocator peak covers what autograd saves; the snnops model saves
    and peaks far lower than the same model on plain PyTorch ops. (PTT with small ranks:
    few weights, so activations set the peak even at this small size.)"""
    fast = models.ms_resnet18("ptt", timesteps=4, ranks=4)
    plain = models.convert_backend(fast, "reference")
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    for m in (fast, plain):
        prof._step(m, x, y)  # gradients allocated once, as in the timed rounds
    peak_fast, saved_fast = prof.peak_memory(fast, x, y)
    peak_plain, saved_plain = prof.peak_memory(plain, x, y)
    # (saved storages may include a few that predate the step, e.g. the input)
    assert peak_fast >= 0.9 * saved_fast > 0 and peak_plain >= 0.9 * saved_plain
    assert saved_plain > 3 * saved_fast
    assert peak_plain > 2.5 * peak_fast


def test_time_shares_attribute_backward_to_layers():
    model = models.ms_resnet18("ptt", timesteps=2, ranks=4, backend="reference")
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    prof._step(model, x, y)   # warm: the first step pays one-time costs
    details = {}
    shares, wall = prof.time_shares(model, x, y, details)
    assert wall > 0 and sum(shares.values()) == pytest.approx(1.0)
    assert min(shares.values()) >= 0 and shares["lif"] > 0 and shares["conv"] > 0 and shares["bn"] > 0
    nodes = details["backward_nodes"]
    # Every LIF's loop leaves many small autograd nodes (2 steps x several ops x 17
    # neurons); each TT layer's four convs, each BN its node: all found by sequence number.
    assert nodes["lif"] >= 17 * 2 * 3 and nodes["conv"] >= 16 * 4 and nodes["bn"] >= 20
    assert not any(hasattr(m, "_snnops_profile_range") for m in model.modules())  # hooks removed


def test_check_targets():
    rows = [dict(method="ptt", label="PTT", reduction_pct=65.0, speedup_vs_plain=1.5, memory_vs_plain=3.2),
            dict(method="htt", label="HTT", reduction_pct=50.0, speedup_vs_plain=2.5, memory_vs_plain=None)]
    got = dict(prof.check_targets(rows))
    assert got["PTT: 65.0% less time than snnops dense (target >= 60%)"] is True
    assert got["HTT: 50.0% less time than snnops dense (target >= 70%)"] is False
    assert got["PTT: 1.50x faster than on plain PyTorch ops (target >= 2x)"] is False
    assert got["HTT: 2.50x faster than on plain PyTorch ops (target >= 2x)"] is True
    assert len(got) == 5


@pytest.mark.parametrize("extra,message", [
    (["--model", "resnet50"], "unknown model 'resnet50'"),
    (["--input-size", "3x4x4"], "too small"),
    (["--input-size", "32x32"], "three positive integers"),
    (["--input-size", "3xAx8"], "C x H x W"),
    (["--timesteps", "0"], "--timesteps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--methods", "dense,fast"], "--methods: unknown"),
    (["--ranks", "0"], "--ranks must be positive"),
    (["--ranks", "4,4"], "one int, 4"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--settle", "-1"], "--settle must be >= 0"),
])
def test_bad_input_exit_code_2(capsys, extra, message):
    args = [a for a in TINY if a not in ("--input-size", "3x8x8")] + extra
    if "--input-size" not in extra:
        args += ["--input-size", "3x8x8"]
    assert cli_main(["profile", *args]) == 2
    assert message in capsys.readouterr().err


def test_command_line_exit_codes():
    """Through the real entry point: a clear message and exit code 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "snnops", "profile", "--input-size", "3x2x2", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "snnops profile: error:" in proc.stderr and "too small" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("n", range(1, 9))
def test_round_orders_balance_who_runs_before_whom(n):
    from collections import Counter
    from snnops.cli.rounds import round_orders, williams_rows
    rows = williams_rows(n)
    assert len(rows) == (2 * n if n % 2 else n)
    assert all(sorted(r) == list(range(n)) for r in rows)
    follows = Counter((r[i], r[i + 1]) for r in rows for i in range(n - 1))
    # every ordered pair of distinct candidates equally often, every position equally often
    assert len(follows) == n * (n - 1) and len(set(follows.values())) <= 1
    assert len(set(Counter((x, i) for r in rows for i, x in enumerate(r)).values())) == 1
    names = [f"m{i}" for i in range(n)]
    orders = round_orders(names, 2 * len(rows) + 1)
    assert orders[len(rows)] == orders[0] and all(sorted(o) == sorted(names) for o in orders)
