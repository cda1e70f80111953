"""Joint A-SNN: WFT layers, dual networks, the joint loss and ``snnops train --method joint``."""
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snnops.joint import (BACKBONES, DualBatchNorm2d, DualOutput, JointLoss, WFTConv2d, WFTLinear, build_network,
                          wft_parameter_report)
from snnops.joint import networks as jnet


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- WFT layers

def _explicit_conv_weight(layer, path):
    """W[o, i, kh, kw] = sum_r U[kh, kw, o, r] sigma[kh, kw, r] V[kh, kw, r, i], in float64."""
    f = layer.factors
    sigma = f.sigma_ann if path == "ann" else f.sigma_snn
    return torch.einsum("hwor,hwr,hwri->oihw", f.U.double(), sigma.double(), f.V.double())


@pytest.mark.parametrize("cin,cout,k,stride,padding", [(3, 5, 3, 1, 1), (6, 4, 2, 2, 0), (4, 4, 1, 1, 0)])
def test_wft_conv_equals_dense_conv_with_composed_weight(cin, cout, k, stride, padding):
    layer = WFTConv2d(cin, cout, k, stride, padding, bias=True).double()
    with torch.no_grad():  # move the paths apart so that a mix-up would show
        layer.factors.sigma_ann.mul_(torch.rand_like(layer.factors.sigma_ann) + 0.5)
        layer.factors.sigma_snn.mul_(torch.rand_like(layer.factors.sigma_snn) + 0.5)
        layer.factors.U.add_(0.1 * torch.randn_like(layer.factors.U))
    x = torch.randn(2, cin, 7, 6, dtype=torch.float64)
    for path in ("ann", "snn"):
        w = _explicit_conv_weight(layer, path)
        expected = F.conv2d(x, w, layer.bias, stride, padding)
        torch.testing.assert_close(layer(x, path), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.composed_weight(path), w, rtol=1e-12, atol=1e-12)
    # time-major input runs as one flattened call, same result as step by step
    xs = torch.randn(3, 2, cin, 7, 6, dtype=torch.float64)
    ys = layer(xs, "snn")
    for t in range(3):
        torch.testing.assert_close(ys[t], layer(xs[t], "snn"), rtol=1e-12, atol=1e-12)


def test_wft_linear_equals_dense_linear():
    layer = WFTLinear(7, 4).double()
    with torch.no_grad():
        layer.factors.sigma_snn.mul_(2.0)
    x = torch.randn(5, 7, dtype=torch.float64)
    f = layer.factors
    for path, sigma in (("ann", f.sigma_ann), ("snn", f.sigma_snn)):
        w = f.U @ torch.diag(sigma) @ f.V
        torch.testing.assert_close(layer(x, path), x @ w.T + layer.bias, rtol=1e-12, atol=1e-12)


def test_wft_init_reproduces_initial_weight_on_both_paths():
    w0 = torch.randn(8, 5, 3, 3)
    layer = WFTConv2d(5, 8, 3, weight=w0)
    # float64 SVD rounded to float32 factors: the recomposition is off by a few float32 ulps.
    torch.testing.assert_close(layer.composed_weight("ann"), w0, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.composed_weight("ann"), layer.composed_weight("snn"))
    assert torch.equal(layer.factors.sigma_ann, layer.factors.sigma_snn)
    assert layer.factors.U.shape == (3, 3, 8, 5) and layer.factors.V.shape == (3, 3, 5, 5)
    lin0 = torch.randn(3, 9)
    lin = WFTLinear(9, 3, weight=lin0)
    torch.testing.assert_close(lin.composed_weight("snn"), lin0, rtol=1e-5, atol=1e-5)
    assert torch.equal(lin.composed_weight("ann"), lin.composed_weight("snn"))


@pytest.mark.parametrize("path,other", [("ann", "snn"), ("snn", "ann")])
def test_gradients_reach_shared_factors_and_own_sigma_only(path, other):
    layer = WFTConv2d(4, 6, 3, padding=1)
    layer(torch.randn(2, 4, 5, 5), path).square().sum().backward()
    f = layer.factors
    for p in (f.U, f.V, getattr(f, f"sigma_{path}")):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert getattr(f, f"sigma_{other}").grad is None
    lin = WFTLinear(5, 3)
    lin(torch.randn(4, 5), path).square().sum().backward()
    assert lin.factors.U.grad.abs().sum() > 0 and lin.factors.V.grad.abs().sum() > 0
    assert getattr(lin.factors, f"sigma_{path}").grad.abs().sum() > 0
    assert getattr(lin.factors, f"sigma_{other}").grad is None


def test_wft_gradcheck_float64():
    conv = WFTConv2d(3, 2, 2, stride=1, padding=1, bias=True).double()
    lin = WFTLinear(3, 4).double()
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    for path in ("ann", "snn"):
        f = conv.factors
        sigma = getattr(f, f"sigma_{path}")

        def conv_fn(x, U, V, s, _path=path):
            # U, V and the path's sigma substituted for the parameters, so gradcheck sees them
            return torch.func.functional_call(conv, {"factors.U": U, "factors.V": V, f"factors.sigma_{_path}": s},
                                              (x, _path))

        args = (x, f.U.detach().clone().requires_grad_(), f.V.detach().clone().requires_grad_(),
                sigma.detach().clone().requires_grad_())
        assert torch.autograd.gradcheck(conv_fn, args)
        g = lin.factors
        lin_fn = (lambda z, U, V, s, _path=path: torch.func.functional_call(
            lin, {"factors.U": U, "factors.V": V, f"factors.sigma_{_path}": s}, (z, _path)))
        assert torch.autograd.gradcheck(lin_fn, (z, g.U.detach().clone().requires_grad_(),
                                                 g.V.detach().clone().requires_grad_(),
                                                 getattr(g, f"sigma_{path}").detach().clone().requires_grad_()))


def test_wft_non_contiguous_and_empty_inputs():
    conv = WFTConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 5, 5, 3).permute(0, 3, 1, 2)  # channels-last view
    assert not x.is_contiguous()
    torch.testing.assert_close(conv(x, "snn"), conv(x.contiguous(), "snn"), rtol=0, atol=0)
    assert conv(torch.randn(0, 3, 5, 5), "ann").shape == (0, 4, 5, 5)
    assert conv(torch.randn(2, 0, 3, 5, 5), "snn").shape == (2, 0, 4, 5, 5)
    lin = WFTLinear(5, 3)
    z = torch.randn(4, 10)[:, ::2]
    torch.testing.assert_close(lin(z, "ann"), lin(z.contiguous(), "ann"), rtol=0, atol=0)
    assert lin(torch.randn(0, 5), "snn").shape == (0, 3)
    assert DualBatchNorm2d(4)(torch.randn(0, 4, 2, 2), "ann").shape == (0, 4, 2, 2)


def test_separate_and_shared_weights():
    w0 = torch.randn(4, 3, 3, 3)
    sep = WFTConv2d(3, 4, 3, weights="separate", weight=w0)
    assert torch.equal(sep.composed_weight("ann"), w0) and torch.equal(sep.composed_weight("snn"), w0)
    sep(torch.randn(1, 3, 4, 4), "snn").sum().backward()
    assert sep.factors.weight_ann.grad is None and sep.factors.weight_snn.grad is not None
    shared = WFTConv2d(3, 4, 3, weights="shared", weight=w0)
    assert shared.composed_weight("ann").data_ptr() == shared.composed_weight("snn").data_ptr()
    assert sum(p.numel() for p in shared.parameters()) == w0.numel()


def test_dual_batchnorm_keeps_one_statistic_per_path():
    bn = DualBatchNorm2d(3)
    bn(torch.randn(4, 3, 2, 2) + 5.0, "ann")
    assert bn.bn["ann"].running_mean.mean() > 0.3
    assert torch.equal(bn.bn["snn"].running_mean, torch.zeros(3))
    y = bn(torch.randn(2, 4, 3, 2, 2), "snn")  # [T, B, C, H, W]
    assert y.shape == (2, 4, 3, 2, 2)
    y.sum().backward()
    assert bn.bn["snn"].weight.grad is not None and bn.bn["ann"].weight.grad is None


def test_wft_layer_errors():
    with pytest.raises(ValueError, match="path must be 'ann' or 'snn'"):
        WFTConv2d(2, 2, 1)(torch.randn(1, 2, 2, 2), "cnn")
    with pytest.raises(ValueError, match="weights must be one of"):
        WFTLinear(2, 2, weights="tied")
    with pytest.raises(ValueError, match=r"x must be \[N, 3, H, W\]"):
        WFTConv2d(3, 2, 1)(torch.randn(1, 2, 4, 4), "ann")
    with pytest.raises(ValueError, match="weight must be a floating tensor of shape"):
        WFTConv2d(3, 2, 1, weight=torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        WFTConv2d(0, 2, 1)


def test_parameter_overhead_matches_paper_accounting():
    c = 16
    square = WFTConv2d(c, c, 3)
    rep = wft_parameter_report(square)
    # square layer: the thin SVD stores exactly the paper's c^2 + c^2 + 2r per position,
    # 2c more than a separate ANN + SNN pair (2 c^2)
    assert rep["stored"] == rep["paper"] == 9 * (2 * c * c + 2 * c)
    assert rep["paper"] - rep["separate"] == 9 * 2 * c
    down = WFTConv2d(c, 2 * c, 3)
    rep = wft_parameter_report(down)
    assert rep["paper"] == 9 * (c * c + 4 * c * c + 2 * c)
    assert rep["paper_over_separate"] == pytest.approx((5 * c + 2) / (4 * c))  # "about 20-25% more"
    assert rep["stored"] == 9 * (c * 3 * c + 2 * c)  # thin SVD: fewer than separate
    sep = wft_parameter_report(WFTConv2d(c, 2 * c, 3, weights="separate"))
    assert sep["stored"] == sep["separate"]


# ----------------------------------------------------------------------------- networks

def _tiny(backbone="resnet18", **kw):
    kw.setdefault("width", 4)
    return build_network(backbone, num_classes=5, in_channels=1, **kw)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_dual_network_shapes_both_paths(backbone):
    net = _tiny(backbone, timesteps=2)
    x = torch.randn(3, 1, 16, 16)
    for path in ("ann", "snn"):
        out = net(x, path)
        assert len(out.logits) == len(out.features) == 4
        assert all(z.shape == (3, 5) for z in out.logits)
        assert all(f.shape == (3, 32) for f in out.features)  # C4 = 8 * width
    assert len(net(x, "snn", branches=False).logits) == 1


def test_branch_kernels_bring_maps_to_last_stage_size():
    net = _tiny()
    ks = [h.body[1][0].kernel_size for h in net.heads]
    assert ks == [(8, 8), (4, 4), (2, 2)]
    assert net.heads[0].body[0][0].out_channels == 8 and net.heads[0].body[2][0].out_channels == 32


def test_snn_path_spikes_are_binary_and_static_input_equals_repeated_sequence():
    net = _tiny(timesteps=3).eval()
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in net.modules()
             if isinstance(m, jnet.DualAct)]
    x = torch.randn(2, 1, 16, 16)
    out = net(x, "snn")
    for h in hooks:
        h.remove()
    assert seen and all(s.dim() == 5 and s.shape[0] == 3 for s in seen)
    assert all(torch.equal(s, (s > 0).to(s.dtype)) for s in seen)
    # the static image computed once and expanded == the explicit [T, B, ...] sequence
    seq = net(x.unsqueeze(0).expand(3, *x.shape).contiguous(), "snn")
    for a, b in zip(out.logits, seq.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_composed_weight_once_per_forward_per_path(monkeypatch):
    net = _tiny()
    n_layers = sum(isinstance(m, (WFTConv2d, WFTLinear)) for m in net.modules())
    calls = []
    for cls in (WFTConv2d, WFTLinear):
        original = cls.composed_weight
        monkeypatch.setattr(cls, "composed_weight",
                            lambda self, path, _o=original: (calls.append((id(self), path)), _o(self, path))[1])
    x = torch.randn(2, 1, 16, 16)
    for T in (1, 4):
        calls.clear()
        net(x, "snn", timesteps=T)
        assert len(calls) == n_layers and len(set(calls)) == n_layers  # independent of T
    calls.clear()
    net(x, "ann")
    assert len(calls) == n_layers and {p for _, p in calls} == {"ann"}


def test_network_lif_is_joint_asnn_neuron():
    assert jnet.JOINT_LIF == dict(decay=0.25, v_threshold=0.5, v_reset=0.0, surrogate="rect", detach_reset=False)
    import snnops
    act = jnet.DualAct(jnet.JOINT_LIF)
    x = torch.tensor([[0.3], [0.3], [0.6]])  # h: 0.3, 0.375, 0.69375 -> spikes 0, 0, 1
    assert act(x, "snn").flatten().tolist() == [0.0, 0.0, 1.0]
    assert torch.equal(act(x, "snn"), snnops.lif(x, **jnet.JOINT_LIF)[0])


def test_network_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        build_network("resnet50")
    with pytest.raises(ValueError, match="width must be a positive int"):
        build_network("resnet18", width=0)
    with pytest.raises(ValueError, match="weights and classifier_weights must be one of"):
        build_network("resnet18", weights="tied")
    with pytest.raises(ValueError, match="unknown lif arguments"):
        build_network("resnet18", lif={"decay": 0.5, "threshold": 1.0})
    net = _tiny()
    with pytest.raises(ValueError, match="ANN path takes"):
        net(torch.randn(2, 2, 1, 16, 16), "ann")
    with pytest.raises(ValueError, match=r"x must be \[B, 1, H, W\]"):
        net(torch.randn(2, 3, 16, 16), "ann")
    with pytest.raises(ValueError, match="path must be"):
        net(torch.randn(2, 1, 16, 16), "both")


# ----------------------------------------------------------------------------- loss

def _outputs(seed, b=4, classes=3, feat=5, branches=4, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    logits = tuple(torch.randn(b, classes, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
                   for _ in range(branches))
    features = tuple(torch.randn(b, feat, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
                     for _ in range(branches))
    return DualOutput(logits, features)


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _hand_paper_terms(ann, snn, y):
    ce = kld = norm = 0.0
    for out in (ann, snn):
        for z in out.logits:
            ls = _np_log_softmax(z.detach().numpy())
            ce += -np.mean(ls[np.arange(len(y)), y.numpy()])
    for za, zs in zip(ann.logits, snn.logits):
        la, ls = _np_log_softmax(za.detach().numpy()), _np_log_softmax(zs.detach().numpy())
        kld += np.mean(np.sum(np.exp(la) * (la - ls), axis=1))
    for fa, fs in zip(ann.features, snn.features):
        norm += np.mean((fa.detach().numpy() - fs.detach().numpy()) ** 2)
    return ce, kld, norm


def test_paper_loss_against_hand_computed_values():
    ann, snn, y = _outputs(1), _outputs(2), torch.tensor([0, 2, 1, 2])
    total, parts = JointLoss("paper")(ann, snn, y)
    ce, kld, norm = _hand_paper_terms(ann, snn, y)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-10)
    assert parts["kld"].item() == pytest.approx(kld, rel=1e-10)
    assert parts["norm"].item() == pytest.approx(norm, rel=1e-10)
    assert total.item() == pytest.approx(ce + 1.0 * kld + 0.3 * norm, rel=1e-10)
    total2, _ = JointLoss("paper", lambda1=0.5, lambda2=2.0)(ann, snn, y)
    assert total2.item() == pytest.approx(ce + 0.5 * kld + 2.0 * norm, rel=1e-10)


def test_authors_loss_against_hand_computed_values():
    ann, snn, y = _outputs(3), _outputs(4), torch.tensor([1, 1, 0, 2])
    tau, a, beta = 3.0, 0.1, 1e-6
    total, parts = JointLoss("authors")(ann, snn, y)
    ce, _, _ = _hand_paper_terms(ann, snn, y)

    def soft_ce(z, t):
        q = np.exp(_np_log_softmax(t.detach().numpy() / tau))
        return -np.mean(np.sum(q * _np_log_softmax(z.detach().numpy() / tau), axis=1))

    def masked(f, t):
        f, t = f.detach().numpy(), t.detach().numpy()
        return np.sum((f - t) ** 2 * ((f > 0) | (t > 0)))

    kd = sum(soft_ce(s, t) for s, t in zip(snn.logits, ann.logits))
    kd += sum(soft_ce(z, ann.logits[-1]) for z in ann.logits[:-1])
    feat = sum(masked(s, t) for s, t in zip(snn.features, ann.features))
    feat += sum(masked(f, ann.features[-1]) for f in ann.features[:-1])
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-10)
    assert parts["kld"].item() == pytest.approx(kd, rel=1e-10)
    assert parts["norm"].item() == pytest.approx(feat, rel=1e-10)
    assert total.item() == pytest.approx((1 - a) * ce + a * tau ** 2 * kd + beta * feat, rel=1e-10)


@pytest.mark.parametrize("form", ["paper", "authors"])
def test_switching_terms_off_removes_them(form):
    ann, snn, y = _outputs(5), _outputs(6), torch.tensor([0, 1, 2, 0])
    _, full = JointLoss(form)(ann, snn, y)
    for off in ("ce", "kld", "norm"):
        loss = JointLoss(form, **{off: False})
        total, parts = loss(ann, snn, y)
        assert off not in parts and set(parts) == {"ce", "kld", "norm"} - {off}
        w = ({"ce": 1.0, "kld": 1.0, "norm": 0.3} if form == "paper" else
             {"ce": 0.9, "kld": 0.9, "norm": 1e-6})
        assert total.item() == pytest.approx(sum(w[k] * full[k].item() for k in parts), rel=1e-10)
    # CE alone (SNN alone) needs no ANN outputs
    total, parts = JointLoss(form, kld=False, norm=False, ann_ce=False)(None, snn, y)
    assert set(parts) == {"ce"}
    assert total.item() == pytest.approx(sum(F.cross_entropy(z, y).item() for z in snn.logits) * w["ce"])


def test_distillation_terms_do_not_reach_the_ann():
    ann, snn, y = _outputs(7, requires_grad=True), _outputs(8, requires_grad=True), torch.tensor([0, 1, 2, 0])
    for form in ("paper", "authors"):
        total, _ = JointLoss(form, ce=False, kld=True, norm=(form == "paper"))(ann, snn, y)
        grads = torch.autograd.grad(total, list(ann.logits) + list(ann.features) + list(snn.logits),
                                    allow_unused=True)
        n = len(ann.logits) + len(ann.features)
        if form == "paper":  # teacher fully detached
            assert all(g is None or g.abs().sum() == 0 for g in grads[:n])
        else:  # the ANN's branches 1-3 learn from its own (detached) output
            assert grads[len(ann.logits) - 1] is None or grads[len(ann.logits) - 1].abs().sum() == 0
            assert grads[0].abs().sum() > 0
        assert all(g.abs().sum() > 0 for g in grads[n:])


def test_loss_errors():
    with pytest.raises(ValueError, match="lambda1 must be a finite number >= 0"):
        JointLoss(lambda1=-1.0)
    with pytest.raises(ValueError, match="lambda2 must be a finite number >= 0"):
        JointLoss(lambda2=-0.3)
    with pytest.raises(ValueError, match="form must be one of"):
        JointLoss("mine")
    with pytest.raises(ValueError, match="every term is switched off"):
        JointLoss(ce=False, kld=False, norm=False)
    with pytest.raises(ValueError, match="temperature"):
        JointLoss("authors", temperature=0.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        JointLoss("authors", alpha=1.5)
    snn = _outputs(1)
    with pytest.raises(ValueError, match="ann outputs are None"):
        JointLoss()(None, snn, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="ann has 1 branches but snn has 4"):
        JointLoss()(_outputs(2, branches=1), snn, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be"):
        JointLoss()(_outputs(2), snn, torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- training CLI

def _cli(argv):
    from snnops.cli import main
    return main(["train", "--method", "joint", "--no-progress", "--threads", "1"] + argv)


def test_tiny_joint_run_trains(tmp_path, capsys):
    out = tmp_path / "summary.json"
    rc = _cli(["--epochs", "4", "--width", "8", "--image-size", "8", "--timesteps", "2", "--batch-size", "128",
               "--lr", "5e-3", "--json", str(out), "--out", str(tmp_path / "run")])
    assert rc == 0
    s = json.loads(out.read_text())
    text = capsys.readouterr().out
    assert "SNN test accuracy" in text and "s per training epoch" in text
    assert s["method"] == "joint" and s["weights"] == "wft" and len(s["history"]) == 4
    # 10 classes, chance 10%. Four epochs of this tiny deep SNN reach ~44% (the ANN ~92%);
    # the full-size run is measured in docs/joint.md.
    assert s["snn_test_acc"] > 30.0 and s["ann_test_acc"] > 80.0
    losses = [r["loss"] for r in s["history"]]
    assert losses == sorted(losses, reverse=True)
    assert s["seconds_per_epoch"] > 0
    assert s["parameters"]["paper"] > s["parameters"]["stored"] > 0
    assert (tmp_path / "run" / "joint_resnet18.pt").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["snn_test_acc"] == s["snn_test_acc"]


def test_ablation_prints_table4_rows(capsys):
    rc = _cli(["--ablation", "--epochs", "1", "--width", "2", "--image-size", "8", "--timesteps", "1",
               "--batch-size", "128"])
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("SNN alone", "+ KD from a trained ANN", "joint CE + KLD", "joint CE + KLD + L2",
                  "WFT alone", "all (joint + WFT)", "(teacher ANN)"):
        assert label in text
    for paper in ("92.39", "93.12", "94.09", "94.52", "93.69", "95.45"):
        assert paper in text


def _fake_cifar(root, n=8):
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(d / name, "wb") as f:
            pickle.dump(entry, f)


def test_cifar_from_local_directory(tmp_path, capsys):
    _fake_cifar(tmp_path)
    rc = _cli(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1", "--width", "2",
               "--timesteps", "1", "--backbone", "vgg16", "--loss", "authors"])
    assert rc == 0
    assert "cifar10 (3, 32, 32)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--backbone", "resnet50"], "unknown backbone 'resnet50'"),
    (["--lambda1", "-1"], "--lambda1 must be a finite number >= 0"),
    (["--lambda2", "-0.5"], "--lambda2 must be a finite number >= 0"),
    (["--loss", "mine"], "--loss must be one of"),
    (["--weights", "tied"], "--weights must be one of"),
    (["--no-ce", "--no-kld", "--no-norm"], "leave no loss"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "dataset directory not found"),
])
def test_cli_bad_configurations(argv, message, capsys):
    assert _cli(argv + ["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err

