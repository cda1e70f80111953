"""``snnops train --method tt``: tiny end-to-end runs (digits, CIFAR from a local
directory), checkpoints and --resume, merge at the end, two-process data parallel equal
to one process, and clear errors with exit code 2."""
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from snnops.cli import main as cli_main

TINY = ["--image-size", "8", "--timesteps", "2", "--train-subset", "64", "--test-subset", "40",
        "--batch-size", "32", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _train(tmp_path, *extra, name="run"):
    out = tmp_path / name
    summary = tmp_path / f"{name}.json"
    code = cli_main(["train", "--method", "tt", *TINY, "--out", str(out), "--json", str(summary), *extra])
    assert code == 0
    return json.loads(summary.read_text()), out


def test_train_ptt_digits_merges_to_the_same_accuracy(tmp_path, capsys):
    summary, out = _train(tmp_path, "--conv", "ptt", "--ranks", "8", "--epochs", "2")
    text = capsys.readouterr().out
    assert "epoch 1/2" in text and "epoch 2/2" in text and "merged to dense" in text
    for key in ("test_accuracy", "time_per_epoch_s", "params", "macs", "merged_test_accuracy", "history"):
        assert key in summary
    assert summary["conv"] == "ptt" and summary["ranks"] == [8] * 16 and summary["epochs"] == 2
    assert len(summary["history"]) == 2 and len(summary["time_per_epoch_s"]) == 2
    assert summary["history"][1]["train_loss"] < summary["history"][0]["train_loss"]
    assert summary["merged_test_accuracy"] == summary["test_accuracy"]
    assert summary["merged_matches"] is True and summary["merged_prediction_agreement"] == 1.0
    assert summary["merged_macs"] > summary["macs"]            # the merged layer is a full 3x3 conv
    assert os.path.isfile(out / "checkpoint.pt") and os.path.isfile(out / "merged.pt")
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["config"]["conv"] == "ptt"


def test_progress_bar_and_per_epoch_checkpoint(tmp_path, capsys):
    out = tmp_path / "bar"
    args = [a for a in TINY if a != "--no-progress"]
    assert cli_main(["train", *args, "--conv", "htt", "--ranks", "4", "--epochs", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and ("it/s" in err or "s/it" in err)   # tqdm's bar on stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ("--conv", "stt", "--ranks", "4", "--epochs", "2")
    full, full_out = _train(tmp_path, *args, name="full")

    from snnops.models import train as tt_train
    evaluate, calls = tt_train.evaluate, []

    def interrupted(*a, **k):  # the run dies during epoch 2, after epoch 1's checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    monkeypatch.setattr(tt_train, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, *args, name="part")
    monkeypatch.setattr(tt_train, "evaluate", evaluate)
    part_out = tmp_path / "part"
    assert torch.load(part_out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed, _ = _train(tmp_path, *args, "--resume", name="part")
    a = torch.load(full_out / "checkpoint.pt", weights_only=False)
    b = torch.load(part_out / "checkpoint.pt", weights_only=False)
    assert b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert resumed["test_accuracy"] == full["test_accuracy"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
    """torchrun with 2 gloo processes, each taking half of every global batch (BN
    statistics reduced across processes, gradients summed): the same losses,
    accuracy and weights as one process with the same global batch."""
    args = ["--conv", "ptt", "--ranks", "4", "--epochs", "1", "--train-subset", "48", "--test-subset", "24",
            "--batch-size", "16"]
    one, one_out = _train(tmp_path, *args, name="one")
    out = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "snnops", "train", *TINY, *args, "--out", str(out),
           "--json", str(tmp_path / "two.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-4)
    assert two["test_accuracy"] == one["test_accuracy"]
    a = torch.load(one_out / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-4, atol=1e-5, msg=k)


def _fake_cifar(root, n=12, broken=False):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(d / name, "wb") as f:
            if broken and name == "test_batch":
                f.write(b"not a pickle")
            else:
                pickle.dump(entry, f)
    return root


def test_cifar_from_a_local_directory(tmp_path):
    root = _fake_cifar(tmp_path / "data")
    summary, _ = _train(tmp_path, "--dataset", "cifar10", "--data-dir", str(root), "--conv", "htt",
                        "--ranks", "4", "--epochs", "1", "--timesteps", "1")
    assert summary["dataset"] == "cifar10" and summary["input_size"] == [3, 32, 32]
    assert summary["train_images"] == 60 and summary["test_images"] == 12


def test_vbmf_ranks_from_a_dense_checkpoint(tmp_path):
    """--ranks vbmf estimates every layer's rank by EVBMF from a trained dense model's
    checkpoint (here one whose kernels have rank 5 plus noise, as training leaves them)."""
    from snnops import models
    _, out = _train(tmp_path, "--conv", "dense", "--epochs", "1", "--timesteps", "1", name="dense")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    dense = models.ms_resnet18("dense", timesteps=1, in_channels=1)
    dense.load_state_dict(ckpt["model"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, _, m in dense.tt_layers():
            cout, cin = m.weight.shape[:2]
            low = torch.randn(cout, 5, generator=g) @ torch.randn(5, 9 * cin, generator=g)
            m.weight.copy_((low + 0.01 * torch.randn(cout, 9 * cin, generator=g)).view_as(m.weight))
    ckpt["model"] = dense.state_dict()
    torch.save(ckpt, tmp_path / "dense.pt")
    summary, _ = _train(tmp_path, "--conv", "ptt", "--ranks", "vbmf", "--dense-from", str(tmp_path / "dense.pt"),
                        "--epochs", "1", name="vbmf")
    assert summary["ranks"] == [5] * 16


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "cifar10"], "pass --data-dir"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "dataset directory not found"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--image-size", "4"], "too small"),
    (["--conv", "ptt", "--ranks", "a,b"], "--ranks must be"),
    (["--conv", "ptt", "--ranks", "4,4"], "one int, 4"),
    (["--conv", "dense", "--ranks", "4"], "--ranks applies to"),
    (["--conv", "ptt", "--ranks", "vbmf"], "--dense-from"),
    (["--resume", "/nonexistent/ckpt.pt"], "checkpoint not found"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--conv", "htt", "--schedule", "sideways"], "HTT schedule"),
])
def test_bad_input_exit_code_2(tmp_path, capsys, extra, message):
    code = cli_main(["train", *TINY, "--out", str(tmp_path / "x"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_malformed_cifar_and_mismatched_resume(tmp_path, capsys):
    root = _fake_cifar(tmp_path / "bad", broken=True)
    assert cli_main(["train", *TINY, "--dataset", "cifar10", "--data-dir", str(root)]) == 2
    assert "not a python pickle" in capsys.readouterr().err
    _train(tmp_path, "--conv", "ptt", "--ranks", "4", "--epochs", "1", name="r")
    code = cli_main(["train", *TINY, "--conv", "stt", "--ranks", "4", "--epochs", "2", "--out", str(tmp_path / "r"),
                     "--resume"])
    assert code == 2
    assert "different settings" in capsys.readouterr().err


def test_unknown_model_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", *TINY, "--model", "resnet50"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
