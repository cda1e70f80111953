"""Reference of the multi-step LIF neuron (and of the lif_fwd / lif_bwd ops)."""
from __future__ import annotations

import torch

from .. import surrogate as _surrogate
from .bits import pack_bits_flat, unpack_bits_flat

__all__ = ["spike", "lif", "lif_fwd", "lif_bwd"]


class _Spike(torch.autograd.Function):
    """Heaviside step forward, surrogate derivative backward."""

    @staticmethod
    def forward(ctx, u, surrogate, v_threshold):
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        ctx.v_threshold = v_threshold
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * ctx.surrogate.grad(u, ctx.v_threshold), None, None


def spike(u: torch.Tensor, surrogate, v_threshold: float = 1.0) -> torch.Tensor:
    """``(u >= 0)`` with the surrogate's derivative."""
    return _Spike.apply(u, _surrogate.get(surrogate), v_threshold)


def lif(x_seq, v=None, *, decay, input_scale, v_threshold, v_reset, surrogate, detach_reset,
        return_membrane=False):
    """Multi-step LIF in the library's canonical form, as a loop over time.

    ``x_seq``: [T, ...]; ``v``: [...] or None (zeros). For every t::

        h = v * decay + x[t] * input_scale + (1 - decay) * v_reset   (v_reset None -> 0)
        s = (h >= v_threshold)              surrogate derivative in backward
        v = h * (1 - s) + v_reset * s        hard reset (v_reset a float)
        v = h - s * v_threshold              soft reset (v_reset None)

    with ``s`` detached in the reset when ``detach_reset``. Half-precision inputs
    compute in float32. Returns ``(spikes, v_last)`` or ``(spikes, v_last, membrane)``
    where ``membrane`` holds v after each step's reset.
    """
    sg = _surrogate.get(surrogate)
    out_dtype = x_seq.dtype
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    x_seq = x_seq.to(compute)
    v = torch.zeros_like(x_seq[0]) if v is None else v.to(compute)
    bias = (1.0 - decay) * (0.0 if v_reset is None else v_reset)
    spikes, membrane = [], []
    for t in range(x_seq.shape[0]):
        h = v * decay + x_seq[t] * input_scale + bias
        s = spike(h - v_threshold, sg, v_threshold)
        s_reset = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - s_reset * v_threshold
        else:
            v = h * (1.0 - s_reset) + v_reset * s_reset
        spikes.append(s)
        membrane.append(v)
    if x_seq.shape[0] == 0:
        spike_seq = torch.empty_like(x_seq)
        membrane_seq = torch.empty_like(x_seq)
    else:
        spike_seq = torch.stack(spikes)
        membrane_seq = torch.stack(membrane)
    out = (spike_seq.to(out_dtype), v.to(out_dtype))
    if return_membrane:
        out = out + (membrane_seq.to(out_dtype),)
    return out


# ---------------------------------------------------------------------------
# Op-level references of torch.ops.snnops.lif_fwd / lif_bwd (the fallback when the
# native extension is absent). Same inputs and outputs as the kernels, including
# the saved-state format, built from the loop above.

def _saves_bits(surrogate_kind: int, detach_reset: bool) -> bool:
    return surrogate_kind == _surrogate.Rectangular.kind and detach_reset


def _surrogate_from_kind(kind: int, alpha: float):
    for cls in (_surrogate.Rectangular, _surrogate.Triangle, _surrogate.ATan,
                _surrogate.Sigmoid, _surrogate.SuperSpike, _surrogate.Dspike):
        if cls.kind == kind:
            return cls(alpha)
    raise ValueError(f"snnops.lif: unknown surrogate id {kind}")


def lif_fwd(x, v, decay, input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset,
            return_membrane, save_for_backward, pack_dim=None):
    sg = _surrogate_from_kind(surrogate, alpha)
    with torch.no_grad():
        spikes, v_last, membrane = lif(
            x, v, decay=decay, input_scale=input_scale, v_threshold=v_threshold, v_reset=v_reset,
            surrogate=sg, detach_reset=detach_reset, return_membrane=True)
        if save_for_backward and _saves_bits(surrogate, detach_reset):
            steps = x.shape[0]
            flat_x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32).reshape(steps, -1)
            # Rebuild h from the membrane: h[t] = v[t-1] * decay + x[t] * c + bias.
            compute = flat_x.dtype
            prev = membrane.to(compute).reshape(steps, -1)
            v0 = torch.zeros_like(flat_x[:1]) if v is None else v.to(compute).reshape(1, -1)
            prev = torch.cat([v0, prev[:-1]], 0)
            bias = (1.0 - decay) * (0.0 if v_reset is None else v_reset)
            h = prev * decay + flat_x * input_scale + bias
            planes = [(h - v_threshold).abs() < alpha / 2]
            if v_reset is not None:
                planes.append(h >= v_threshold)
            saved = pack_bits_flat(torch.stack(planes))
        else:
            saved = torch.empty(0, dtype=torch.int32, device=x.device)
    if not return_membrane:
        membrane = torch.empty(0, dtype=x.dtype, device=x.device)
    if pack_dim is not None:
        from .spike_gemm import pack_spikes
        packed = pack_spikes(spikes, pack_dim)
    else:
        packed = torch.empty(0, dtype=torch.int32, device=x.device)
    return spikes, v_last, membrane, saved, packed


def lif_bwd(grad_spikes, grad_v_last, grad_membrane, x, v, saved, shape, dtype, has_v, decay,
            input_scale, v_threshold, v_reset, surrogate, alpha, detach_reset):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    device = saved.device if x is None else x.device
    steps = shape[0]
    n = 1
    for d in shape[1:]:
        n *= d

    def flat(g):
        if g is None or g.numel() == 0:
            return torch.zeros(steps, n, dtype=compute, device=device)
        return g.to(compute).reshape(steps, n)

    gs, gm = flat(grad_spikes), flat(grad_membrane)
    gvl = (torch.zeros(n, dtype=compute, device=device) if grad_v_last is None or grad_v_last.numel() == 0
           else grad_v_last.to(compute).reshape(n))
    sg = _surrogate_from_kind(surrogate, alpha)
    if _saves_bits(surrogate, detach_reset):
        window = unpack_bits_flat(saved[0], n).to(compute)
        fired = unpack_bits_flat(saved[1], n).to(compute) if v_reset is not None else torch.zeros_like(window)
        g = torch.zeros(n, dtype=compute, device=device)
        gx = torch.empty(steps, n, dtype=compute, device=device)
        for t in reversed(range(steps)):
            gv = gm[t] + (gvl if t == steps - 1 else 0.0)
            gh = gs[t] * window[t] / alpha + (gv + g) * (1.0 - fired[t])
            gx[t] = gh * input_scale
            g = gh * decay
        grad_x = gx.reshape(shape).to(dtype)
        grad_v = g.reshape(shape[1:]).to(dtype) if has_v else torch.empty(0, dtype=dtype, device=device)
        return grad_x, grad_v
    with torch.enable_grad():
        xr = x.detach().to(compute).requires_grad_(True)
        vr = v.detach().to(compute).requires_grad_(True) if v is not None else None
        spikes, v_last, membrane = lif(
            xr, vr, decay=decay, input_scale=input_scale, v_threshold=v_threshold, v_reset=v_reset,
            surrogate=sg, detach_reset=detach_reset, return_membrane=True)
        inputs = [xr] + ([vr] if vr is not None else [])
        grads = torch.autograd.grad(
            [spikes, v_last, membrane],
            inputs,
            [gs.reshape(shape), gvl.reshape(shape[1:]), gm.reshape(shape)],
            allow_unused=True)
    grad_x = grads[0] if grads[0] is not None else torch.zeros(shape, dtype=compute, device=device)
    if has_v:
        grad_v = grads[1] if vr is not None and grads[1] is not None else torch.zeros(shape[1:], dtype=compute, device=device)
    else:
        grad_v = torch.empty(0, dtype=compute, device=device)
    return grad_x.to(dtype), grad_v.to(dtype)
