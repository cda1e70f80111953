"""Bit-packed spikes: layout, exact round trips, bad input (C++ on both ISAs, reference, Triton)."""
import pytest
import torch

import snnops
from snnops import reference

# (shape, dim): odd feature counts, word boundaries, NCHW, multi-step LIF outputs, empty;
# 17x17 images span several of the column packers' position chunks (256 positions with
# AVX-512, 64 with AVX2), a partial chunk and a tail shorter than one vector.
CASES = [
    ((7, 1), -1), ((3, 31), -1), ((4, 32), -1), ((2, 33), 1), ((5, 100), -1),
    ((2, 37, 3, 5), 1), ((2, 64, 4, 4), 1), ((2, 3, 45, 2, 3), 2), ((3, 70, 9), 0),
    ((2, 45, 17, 17), 1), ((2, 96, 600), 1),
    ((0, 33), -1), ((4, 0), -1), ((2, 0, 3, 3), 1), ((2, 5, 0, 3), 1),
]


def _spikes(shape, density=0.3, dtype=torch.float32):
    return (torch.rand(shape) < density).to(dtype)


def test_layout_is_lsb_first_with_zero_padding():
    x = torch.zeros(2, 40)
    x[0, [0, 2]] = 1        # word 0 = 0b101
    x[1, 31] = 1            # bit 31 of word 0: the int32 sign bit
    x[1, 32] = 1            # feature 32 -> bit 0 of word 1
    p = snnops.pack_spikes(x)
    assert p.dtype == torch.int32 and p.shape == (2, 2)
    assert p.tolist() == [[5, 0], [-2 ** 31, 1]]
    # NCHW along C -> one packed row per position, channels last
    y = torch.zeros(1, 3, 2, 2)
    y[0, 1, 1, 0] = 1
    q = snnops.pack_spikes(y, dim=1)
    assert q.shape == (1, 2, 2, 1) and q[0, 1, 0, 0].item() == 2 and int(q.sum()) == 2


@pytest.mark.parametrize("shape,dim", CASES)
def test_round_trip_matches_reference(cpu_isa, shape, dim):
    for density in (0.0, 0.3, 1.0):
        x = _spikes(shape, density)
        p = snnops.pack_spikes(x, dim)
        assert torch.equal(p, reference.pack_spikes(x, dim))
        k = shape[dim]
        if k % 32 and p.numel():
            assert int((p[..., -1].to(torch.int64) >> (k % 32)).abs().sum()) == 0  # high bits are 0
        assert torch.equal(snnops.unpack_spikes(p, k, dim), x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.uint8,
                                   torch.int8, torch.int32, torch.int64])
def test_dtypes(cpu_isa, dtype):
    x = _spikes((6, 45), 0.4)
    p = snnops.pack_spikes(x.to(dtype))
    assert torch.equal(p, snnops.pack_spikes(x))
    assert torch.equal(snnops.unpack_spikes(p, 45, dtype=dtype), x.to(dtype))


def test_non_contiguous_and_channels_last(cpu_isa):
    x = _spikes((40, 9))
    assert torch.equal(snnops.pack_spikes(x.t()), reference.pack_spikes(x.t().contiguous(), -1))
    y = _spikes((2, 70, 5, 6))
    cl = y.to(memory_format=torch.channels_last)
    assert torch.equal(snnops.pack_spikes(cl, 1), reference.pack_spikes(y, 1))
    sl = y[:, :, ::2, 1:]
    assert torch.equal(snnops.pack_spikes(sl, 1), reference.pack_spikes(sl.contiguous(), 1))
    assert torch.equal(snnops.pack_spikes(y, -3), snnops.pack_spikes(y, 1))


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("shape,dim,where", [((3, 70), -1, (1, 65)), ((2, 40, 3, 9), 1, (1, 33, 2, 8)),
                                             ((2, 9, 40), 2, (0, 8, 39)), ((2, 40, 300), 1, (1, 33, 270))])
def test_non_binary_raises_and_says_where(cpu_isa, bad, shape, dim, where):
    x = _spikes(shape)
    x[where] = bad
    with pytest.raises(RuntimeError, match=r"only 0 or 1.*at index \(" + ", ".join(map(str, where)) + r"\)"):
        snnops.pack_spikes(x, dim)


def test_non_binary_integer_and_reference_error():
    x = torch.zeros(4, 50, dtype=torch.int64)
    x[3, 49] = 3
    with pytest.raises(RuntimeError, match=r"only 0 or 1, found 3.*\(3, 49\)"):
        snnops.pack_spikes(x)
    with pytest.raises(RuntimeError, match=r"only 0 or 1.*\(3, 49\)"):
        reference.pack_spikes(x, -1)


def test_negative_zero_is_zero(cpu_isa):
    x = torch.full((2, 35), -0.0)
    assert int(snnops.pack_spikes(x).abs().sum()) == 0


def test_bad_arguments():
    with pytest.raises(TypeError, match="spikes must be a tensor"):
        snnops.pack_spikes([0, 1])
    with pytest.raises(ValueError, match="at least one dimension"):
        snnops.pack_spikes(torch.tensor(1.0))
    with pytest.raises(IndexError, match="dim 2 is out of range"):
        snnops.pack_spikes(torch.zeros(3, 4), 2)
    p = snnops.pack_spikes(torch.zeros(3, 40))
    with pytest.raises(ValueError, match=r"2 words.*features=70 needs ceil\(70/32\) = 3"):
        snnops.unpack_spikes(p, 70)
    with pytest.raises(TypeError, match="int32"):
        snnops.unpack_spikes(p.float(), 40)
    with pytest.raises(TypeError, match="features must be an integer, got float"):
        snnops.unpack_spikes(p, 40.5)  # int() would have cut it to 40


def test_packed_is_32x_smaller():
    x = _spikes((64, 1024))
    assert x.numel() * x.element_size() == 32 * snnops.pack_spikes(x).numel() * 4


def test_triton_pack_unpack_interpreter():
    pytest.importorskip("triton")
    from snnops.kernels import spike_gemm as k
    for shape, dim in [((5, 70), -1), ((2, 37, 3, 5), 1), ((3, 32), 0)]:
        x = _spikes(shape)
        p = k.pack_spikes(x, dim)
        assert torch.equal(p, reference.pack_spikes(x, dim))
        assert torch.equal(k.unpack_spikes(p, shape[dim], dim, torch.float32), x)
    x = _spikes((3, 40))
    x[2, 37] = 0.25
    with pytest.raises(RuntimeError, match=r"only 0 or 1.*\(2, 37\)"):
        k.pack_spikes(x, -1)


def opcheck_samples():
    torch.manual_seed(1)
    x = _spikes((5, 45))
    y = _spikes((2, 40, 3, 3))
    yield "pack_spikes", (x, -1), {}
    yield "pack_spikes", (y, 1), {}
    yield "unpack_spikes", (reference.pack_spikes(x, -1), 45, -1, torch.float32), {}
    yield "unpack_spikes", (reference.pack_spikes(y, 1), 40, 1, torch.float64), {}



@pytest.mark.slow
@pytest.mark.parametrize("shape,dim", [((2**26 + 3, 33), 1), ((2**17 + 1, 64, 16, 16), 1)],
                         ids=["rows", "nchw-columns"])
def test_pack_and_unpack_past_2_31_elements(shape, dim, large):
    """Both packers (rows of features, and NCHW channels per position) and the unpack,
    over more than 2^31 spikes: 2-4.5 GiB (uint8 spikes and their unpacked copy)."""
    large.need(6)
    # random bits with an odd period (997 rows of 1-byte spikes)
    s = large.tile((torch.rand(997, *shape[1:]) < 0.5).to(torch.uint8), shape[0])
    p = snnops.pack_spikes(s, dim)
    per_row = s[0].numel()
    for sl in large.rows(shape[0], per_row):
        assert torch.equal(p[sl], reference.pack_spikes(s[sl].float(), dim)), sl
    u = snnops.unpack_spikes(p, shape[dim], dim, dtype=torch.uint8)
    for sl in large.rows(shape[0], per_row):
        assert torch.equal(u[sl], s[sl]), sl
