"""MS-ResNet models: shapes, the paper's counts, both backends on identical math,
merge equivalence on whole models, a short convergence test against the reference
backend, saved-memory accounting, and clear errors for bad input."""
import pytest
import torch
import torch.nn.functional as F

from snnops import models
from snnops.models.blocks import SeqConv2d, TemporalBatchNorm, full_steps
from snnops.nn import MergedTTConv2d, TTConv2d

CONVS = ("dense", "stt", "ptt", "htt")


pytestmark = pytest.mark.usefixtures("one_thread")


def _spiking_bn(model, seed=0):
    """BN scales that make every layer fire (untrained, the residual branches start
    almost silent); then running statistics from a few training-mode batches."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.8 + 0.7 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(-0.1 + 0.4 * torch.rand(m.bias.shape, generator=g))
    return model


def _rates(model, x):
    rates = []
    hooks = [m.register_forward_hook(lambda m, i, o: rates.append(float((o[0] if isinstance(o, tuple) else o).mean())))
             for m in model.modules() if isinstance(m, models.blocks.SpikingNeuron)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rates


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("conv", CONVS)
def test_shapes_static_and_event_input(conv):
    model = models.ms_resnet18(conv, timesteps=2, num_classes=7, in_channels=2)
    assert model(torch.randn(3, 2, 8, 8)).shape == (3, 7)
    assert model(torch.randn(2, 3, 2, 12, 8)).shape == (3, 7)   # [T, B, C, H, W]


def test_resnet34_shape_and_layers():
    model = models.ms_resnet34("ptt", timesteps=1)
    assert len(model.blocks) == 16 and len(model.ranks) == 32
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_static_input_equals_repeated_event_frames():
    """The stem runs once for a static image; the result is that of T equal frames."""
    model = _spiking_bn(models.ms_resnet18("ptt", timesteps=3, backend="reference"))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    model.double()
    a = model(x)
    b = model(x.unsqueeze(0).expand(3, -1, -1, -1, -1).contiguous())
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- counts

def test_dense_counts_reproduce_the_paper():
    r18 = models.ms_resnet18("dense")
    assert r18.count_params() == pytest.approx(11.20e6, rel=0.005)      # paper: 11.20 M
    assert r18.count_macs((3, 32, 32)) == pytest.approx(2.221e9, rel=0.001)  # 2.221 G over T = 4
    r34 = models.ms_resnet34("dense", timesteps=6, num_classes=101, in_channels=2)
    assert r34.count_params() == pytest.approx(21.31e6, rel=0.002)      # 21.31 M
    assert r34.count_macs((2, 48, 48)) == pytest.approx(15.65e9, rel=0.001)  # 15.65 G over T = 6


def _tt_formula(model, size, htt):
    """The paper's counts, written out independently of the model code."""
    c, h, w = size
    steps = model.timesteps
    full = sum(full_steps("first", steps)) if htt else steps
    macs = 9 * c * 64 * h * w * steps
    cin = 64
    for stage, (cout, n) in enumerate(zip((64, 128, 256, 512), (2, 2, 2, 2))):
        for b in range(n):
            for layer, (ci, co) in enumerate(((cin, cout), (cout, cout))):
                r = model.ranks[4 * stage + 2 * b + layer]
                macs += h * w * (full * (r * ci + 6 * r * r + r * co) + (steps - full) * r * (ci + co))
                if stage > 0 and b == 0 and layer == 0:
                    macs += (h // 2) * (w // 2) * ci * co * steps  # 1x1 shortcut at the output size
                    h, w = h // 2, w // 2
            cin = cout
    return macs + 512 * 10


@pytest.mark.parametrize("conv", ("stt", "ptt", "htt"))
def test_tt_counts_default_ranks(conv):
    model = models.ms_resnet18(conv)
    assert model.ranks == [16] * 8 + [64] * 4 + [176] * 4
    # The default ranks give the paper's 1.83 M parameters within 5%.
    assert model.count_params() == pytest.approx(1.83e6, rel=0.05)
    assert model.count_macs((3, 32, 32)) == _tt_formula(model, (3, 32, 32), conv == "htt")
    assert model.count_macs((3, 32, 32)) == pytest.approx(0.372e9 if conv != "htt" else 0.282e9, rel=0.05)


def test_rank_forms():
    assert models.ms_resnet18("ptt", ranks=8).ranks == [8] * 16
    assert models.ms_resnet18("ptt", ranks=[4, 8, 12, 16]).ranks == [4] * 4 + [8] * 4 + [12] * 4 + [16] * 4
    per_layer = list(range(1, 17))
    assert models.ms_resnet18("stt", ranks=per_layer).ranks == per_layer
    assert models.ms_resnet34("ptt", ranks=[1, 2, 3, 4]).ranks == [1] * 6 + [2] * 8 + [3] * 12 + [4] * 6


def test_vbmf_ranks_from_a_dense_model():
    dense = models.ms_resnet18("dense")
    with pytest.raises(ValueError, match="blocks.0.conv1.*untrained"):
        models.ms_resnet18("ptt", ranks="vbmf", dense_model=dense)   # EVBMF needs trained kernels
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # kernels with clear low-rank structure, as training leaves them
        for _, _, m in dense.tt_layers():
            cout, cin = m.weight.shape[:2]
            low = torch.randn(cout, 6, generator=g) @ torch.randn(6, 9 * cin, generator=g)
            m.weight.copy_((low + 0.01 * torch.randn(cout, 9 * cin, generator=g)).view_as(m.weight))
    tt = models.ms_resnet18("ptt", ranks="vbmf", dense_model=dense)
    assert tt.ranks == [6] * 16


# ----------------------------------------------------------------------------- backends

@pytest.mark.parametrize("conv", CONVS)
def test_backends_identical_math(conv):
    """snnops and plain-PyTorch backends share parameters; in float64 (no threshold
    ties from rounding) forward and gradients agree."""
    torch.manual_seed(1)
    fast = _spiking_bn(models.ms_resnet18(conv, timesteps=2)).double()
    plain = models.convert_backend(fast, "reference")
    assert plain.backend == "reference" and all(
        m.backend == "reference" for m in plain.modules() if isinstance(m, (TTConv2d,)))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    a, b = fast(x), plain(x)
    assert min(_rates(fast, x)) > 0.0
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    F.cross_entropy(a, y).backward()
    F.cross_entropy(b, y).backward()
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_dense_backends_agree_float32():
    """Dense float32: the same convolutions (oneDNN, channels-last on snnops), LIFs exact
    against the loop: logits agree to rounding."""
    fast = _spiking_bn(models.ms_resnet18("dense", timesteps=2))
    plain = models.convert_backend(fast, "reference")
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-4)


def test_small_output_convs_run_nchw():
    """3x3 convs whose output is 4x4 or smaller run (and keep their weight) in NCHW, the
    others channels-last; frames between layers stay channels-last and the gradients
    equal the plain-PyTorch model's."""
    fast = models.ms_resnet18("dense", timesteps=2)
    plain = models.convert_backend(fast, "reference")
    # PyTorch's BN on both sides, so that only the convs differ: bn_add rounds BN's
    # output differently (tested in float64 below), which can move a LIF input across a
    # surrogate-window edge at a float32 tie and change a gradient locally
    for m in fast.modules():
        if isinstance(m, TemporalBatchNorm):
            m.fuse_add = False
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 10, (2,))
    F.cross_entropy(fast(x), y).backward()
    F.cross_entropy(plain(x), y).backward()
    l1, l4 = fast.blocks[0].conv1.weight, fast.blocks[-1].conv2.weight
    assert l1.is_contiguous(memory_format=torch.channels_last) and not l1.is_contiguous()
    assert l4.is_contiguous()
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_spike_conv_saves_bits():
    """The snnops dense model keeps the convs' spike inputs as bits: autograd saves
    about 1/3 of what the plain-PyTorch model saves (BN inputs stay float)."""
    fast = models.ms_resnet18("dense", timesteps=4)
    plain = models.convert_backend(fast, "reference")
    x = torch.randn(2, 3, 16, 16)

    def saved_bytes(model):
        seen = {}

        def pack(t):
            if isinstance(t, torch.Tensor):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        return sum(v for k, v in seen.items() if k not in params)

    ratio = saved_bytes(plain) / saved_bytes(fast)
    assert ratio > 2.5, ratio
    # and the packed copy gives the same gradients (checked in float32 here)
    y = torch.randint(0, 10, (2,))
    F.cross_entropy(fast(x), y).backward()
    F.cross_entropy(plain(x), y).backward()
    for p, q in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def _assert_same_training_math(fused, separate, a, b, x, y):
    """Two float64 models built alike (one on a fused path, one not) agree: the training
    outputs a, b of x, the gradients and running statistics they leave, then the eval
    output."""
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    F.cross_entropy(a, y).backward()
    F.cross_entropy(b, y).backward()
    for (name, p), q in zip(fused.named_parameters(), separate.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=name)
    for (name, t), u in zip(fused.named_buffers(), separate.buffers()):
        torch.testing.assert_close(t, u, rtol=1e-9, atol=1e-12, msg=name)
    fused.eval()
    separate.eval()
    torch.testing.assert_close(fused(x), separate(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("conv", ("dense", "htt"))
def test_fused_bn_lif_equals_bn_then_lif(conv, monkeypatch):
    """Each block's first BN and the LIF after it run as one fused op on snnops; the
    model computes what BN then LIF compute (float64: no threshold ties), including
    the running statistics."""
    import copy
    from snnops.models import blocks, ms_resnet
    torch.manual_seed(5)
    fused = _spiking_bn(models.ms_resnet18(conv, timesteps=2)).double()
    separate = copy.deepcopy(fused)
    for m in separate.modules():
        if isinstance(m, blocks.TemporalBatchNorm):
            m.fuse_lif = False
    calls = []
    real = ms_resnet.fused_bn_lif
    monkeypatch.setattr(ms_resnet, "fused_bn_lif", lambda *a: calls.append(1) or real(*a))
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    a, b = fused(x), separate(x)
    assert len(calls) == 8                      # one per block
    _assert_same_training_math(fused, separate, a, b, x, y)


@pytest.mark.parametrize("conv", ("dense", "ptt"))
def test_bn_add_equals_bn_then_add(conv, monkeypatch):
    """On snnops every BN runs as one bn_add: each block's second BN with the shortcut
    as its residual, the stem's and the shortcuts' BNs without. The model computes
    what PyTorch's BN then the add compute (float64: no threshold ties), including the
    running statistics, in training and in eval."""
    import copy
    from snnops.models import blocks
    torch.manual_seed(6)
    fused = _spiking_bn(models.ms_resnet18(conv, timesteps=2)).double()
    separate = copy.deepcopy(fused)
    for m in separate.modules():
        if isinstance(m, TemporalBatchNorm):
            m.fuse_add = False
    calls = []
    real = blocks._bn_add
    monkeypatch.setattr(blocks, "_bn_add", lambda z, r, *a: calls.append(r is not None) or real(z, r, *a))
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    a, b = fused(x), separate(x)
    assert calls.count(True) == 8 and calls.count(False) == 4     # 8 blocks; stem + 3 shortcut BNs
    _assert_same_training_math(fused, separate, a, b, x, y)
    # event frames: the stem BN over all T steps
    frames = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    fused.train()
    separate.train()
    torch.testing.assert_close(fused(frames), separate(frames), rtol=1e-9, atol=1e-9)


def test_block_input_gradients_add_in_place():
    """The shortcut's gradient is bn_add's output gradient itself (no copy, no view), so
    autograd adds the block input's LIF gradient into it in place: no out-of-place
    ``aten::add`` of a block-sized tensor in the backward except at the last stage,
    whose output gradient comes from the head LIF as a view."""
    from torch.profiler import profile
    model = models.ms_resnet18("dense", timesteps=2)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    F.cross_entropy(model(x), y).backward()
    loss = F.cross_entropy(model(x), y)
    with profile(record_shapes=True) as prof:
        loss.backward()
    sums = [(e.name, tuple(e.input_shapes[0])) for e in prof.events()
            if e.name in ("aten::add", "aten::add_") and e.input_shapes and len(e.input_shapes[0]) == 5]
    in_place = {s for n, s in sums if n == "aten::add_"}
    out_of_place = {s for n, s in sums if n == "aten::add"}
    assert {(2, 2, 64, 16, 16), (2, 2, 128, 8, 8), (2, 2, 256, 4, 4)} <= in_place, sums
    assert out_of_place <= {(2, 2, 512, 2, 2)}, sums


@pytest.mark.parametrize("channels_last", (False, True))
def test_subsampled_shortcut_is_the_strided_conv(channels_last):
    """Same output and gradients as the strided conv; the input's gradient has the
    input's layout (channels-last frames stay channels-last)."""
    conv = SeqConv2d(8, 16, 1, stride=2, bias=False).double()
    x = torch.randn(2, 3, 8, 7, 9, dtype=torch.float64)
    if channels_last:
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    x.requires_grad_()
    g = torch.randn(2, 3, 16, 4, 5, dtype=torch.float64)
    expected = conv(x)
    ex_gx, ex_gw = torch.autograd.grad(expected, (x, conv.weight), g)
    conv.subsample_first = True
    y = conv(x)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), g)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, ex_gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, ex_gw, rtol=1e-12, atol=1e-12)
    assert gx.stride() == x.stride()


@pytest.mark.parametrize("channels_last", (False, True))
def test_repeat_steps_gradient_is_the_sum_over_steps(channels_last):
    from snnops.models.blocks import frames_channels_last, repeat_steps
    x = torch.randn(1, 2, 5, 3, 4, dtype=torch.float64)
    g = torch.randn(3, 2, 5, 3, 4, dtype=torch.float64)
    if channels_last:
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        g = g.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    x.requires_grad_()
    y = repeat_steps(x, 3)
    assert y.shape == (3, 2, 5, 3, 4) and torch.equal(y, x.expand(3, -1, -1, -1, -1))
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g.sum(0, keepdim=True), rtol=1e-12, atol=1e-12)
    assert frames_channels_last(gx) == channels_last


# ----------------------------------------------------------------------------- merge

@pytest.mark.parametrize("conv", ("stt", "ptt", "htt"))
@pytest.mark.parametrize("backend", ("snnops", "reference"))
def test_merge_whole_model(conv, backend):
    """A trained-like TT model (firing BN, running statistics) and its merged dense
    form give the same predictions; in float64 the logits agree to rounding."""
    torch.manual_seed(2)
    model = _spiking_bn(models.ms_resnet18(conv, timesteps=4, backend=backend))
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        for _ in range(3):
            model(x + 0.1 * torch.randn_like(x))
    model.eval()
    merged = models.merge(model)
    assert merged.conv == f"merged-{conv}"
    layers = [m for _, _, m in merged.tt_layers()]
    assert all(isinstance(m, MergedTTConv2d) for m in layers)
    assert all(isinstance(m, TTConv2d) for _, _, m in model.tt_layers())  # the original is untouched
    if conv != "stt":  # PTT / HTT kernels have zero corners
        w = layers[0].conv.weight
        assert torch.count_nonzero(w[:, :, ::2, ::2]) == 0
    rates = _rates(model, x)
    assert sum(r > 0 for r in rates) >= 0.75 * len(rates), rates  # spikes flow through the TT layers
    with torch.no_grad():
        a, b = model(x), merged(x)
    assert torch.equal(a.argmax(1), b.argmax(1))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        a64, b64 = model.double()(x.double()), merged.double()(x.double())
    torch.testing.assert_close(a64, b64, rtol=1e-10, atol=1e-10)


def test_merge_dense_is_a_copy():
    model = models.ms_resnet18("dense", timesteps=1)
    merged = models.merge(model)
    assert merged is not model and merged.conv == "dense"
    with pytest.raises(TypeError, match="MS-ResNet"):
        models.merge(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("schedule", ("last", "alternate", "FHHF", [False, True, True, False]))
def test_htt_schedules(schedule):
    model = _spiking_bn(models.ms_resnet18("htt", timesteps=4, schedule=schedule)).eval()
    layer = model.blocks[0].conv1
    assert layer.schedule_for(4) == full_steps(schedule, 4)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), models.merge(model)(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- convergence

def _digits(n=96, size=8):
    from snnops import data
    split = data.digits(size=size)
    return split.x_train[:n], split.y_train[:n]


def _loss_curve(model, x, y, steps, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    losses = []
    for s in range(steps):
        i = (s * batch) % len(y)
        xb, yb = x[i:i + batch], y[i:i + batch]
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_convergence_matches_reference_backend_dense():
    """A small dense MS-ResNet18 (8x8 digits, T = 2) trained on both backends from the
    same initialization: the loss falls on both and the curves match. The snnops model
    runs oneDNN on channels-last frames (other kernels, other rounding), so a spike can
    flip at a threshold tie after a few updates: the first loss agrees to rounding,
    later ones within a loose bound."""
    x, y = _digits()
    torch.manual_seed(3)
    fast = models.ms_resnet18("dense", timesteps=2, in_channels=1)
    plain = models.convert_backend(fast, "reference")
    a = _loss_curve(fast, x, y, steps=12, batch=32)
    b = _loss_curve(plain, x, y, steps=12, batch=32)
    assert sum(a[-3:]) < 0.7 * sum(a[:3]) and sum(b[-3:]) < 0.7 * sum(b[:3]), (a, b)
    assert abs(a[0] - b[0]) < 1e-4
    assert max(abs(p - q) for p, q in zip(a, b)) < 0.25, (a, b)


def test_convergence_matches_reference_backend_ptt():
    """PTT: the fused TT kernels round differently from four separate convolutions,
    so the comparison runs in float64 (no spike flips at threshold ties): the loss
    falls and the two curves agree step by step."""
    x, y = _digits()
    torch.manual_seed(3)
    fast = models.ms_resnet18("ptt", timesteps=2, in_channels=1, ranks=8).double()
    plain = models.convert_backend(fast, "reference")
    a = _loss_curve(fast, x.double(), y, steps=18, batch=32)
    b = _loss_curve(plain, x.double(), y, steps=18, batch=32)
    assert sum(a[-3:]) < 0.6 * sum(a[:3]), a
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-6, atol=1e-6)


def test_convergence_float32_close_to_reference():
    """float32 (the training dtype): rounding differs between kernels, so a spike can
    flip at a threshold tie and the curves drift apart slowly; both still fall and
    stay close."""
    x, y = _digits()
    torch.manual_seed(4)
    fast = models.ms_resnet18("htt", timesteps=2, in_channels=1, ranks=8)
    plain = models.convert_backend(fast, "reference")
    a = _loss_curve(fast, x, y, steps=12, batch=32)
    b = _loss_curve(plain, x, y, steps=12, batch=32)
    assert sum(a[-3:]) < 0.7 * sum(a[:3]) and sum(b[-3:]) < 0.7 * sum(b[:3])
    assert max(abs(p - q) for p, q in zip(a, b)) < 0.25, (a, b)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs,match", [
    (dict(conv="tt"), "conv must be one of"),
    (dict(conv="ptt", ranks=[4, 4]), "one int, 4 .one per stage. or 16"),
    (dict(conv="ptt", ranks=0), "ranks must be >= 1"),
    (dict(conv="ptt", ranks="auto"), "'vbmf'"),
    (dict(conv="ptt", ranks="vbmf"), "dense_model"),
    (dict(backend="cuda"), "backend must be one of"),
    (dict(timesteps=0), "timesteps must be a positive integer"),
    (dict(conv="htt", schedule="middle"), "HTT schedule"),
    (dict(conv="htt", timesteps=4, schedule="FFH"), "HTT schedule"),
    (dict(decay=1.5), "decay must be in"),
    (dict(surrogate="nope"), "unknown name"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.ms_resnet18(**kwargs)


def test_bad_inputs():
    model = models.ms_resnet18("ptt", timesteps=2)
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="3 channels|in_channels=3"):
        model(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="timesteps=2"):
        model(torch.randn(3, 1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="too small"):
        model.count_macs((3, 4, 4))
    with pytest.raises(ValueError, match="unknown model"):
        models.build("resnet50")
    assert isinstance(models.build("ms-resnet18", conv="dense", timesteps=1), models.MSResNet)
