"""``snnops.nn.TTConv2d``: a 3x3 convolution in tensor-train form (STT / PTT / HTT), and
``snnops.nn.MergedTTConv2d``, the ordinary convolution(s) it merges into.

See ``../shared/docs/METHODS.md`` section 2 and ``docs/tt_conv.md``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .. import reference
from ..ops._params import flag
from ..ops.pack import unpack_spikes
from ..ops.tt_conv import tt_conv as _fused_tt_conv

__all__ = ["TTConv2d", "MergedTTConv2d", "parse_schedule", "default_schedule"]

MODES = ("stt", "ptt", "htt")


def default_schedule(timesteps: int) -> list:
    """Full steps first: ``ceil(T/2)`` full, then half (T = 4: FFHH, as the paper)."""
    full = (timesteps + 1) // 2
    return [t < full for t in range(timesteps)]


def parse_schedule(schedule, who: str = "snnops.nn.TTConv2d") -> Optional[list]:
    """``'FFHH'``, ``['F', 'H']``, ``[True, False]`` or ``['full', 'half']`` -> list of bool
    (True = full step); None stays None."""
    if schedule is None:
        return None
    items = list(schedule)
    out = []
    for s in items:
        if isinstance(s, bool):
            out.append(s)
        elif isinstance(s, str) and s.lower() in ("f", "full"):
            out.append(True)
        elif isinstance(s, str) and s.lower() in ("h", "half"):
            out.append(False)
        else:
            raise ValueError(f"{who}: schedule entries must be 'F'/'H' (or 'full'/'half', or bools), "
                             f"got {s!r} in {schedule!r}")
    if not out:
        raise ValueError(f"{who}: schedule must name at least one timestep, got {schedule!r}")
    return out


def _check_ranks(rank, mode: str, who: str):
    if isinstance(rank, bool) or not isinstance(rank, (int, tuple, list, str)):
        raise TypeError(f"{who}: rank must be an int, a tuple of three ints or 'vbmf', got {rank!r}")
    if isinstance(rank, str):
        if rank != "vbmf":
            raise ValueError(f"{who}: rank must be an int, a tuple of three ints or 'vbmf', got {rank!r}")
        return rank
    ranks = (rank,) * 3 if isinstance(rank, int) else tuple(rank)
    if len(ranks) != 3 or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise ValueError(f"{who}: rank must be an int or a tuple of three ints (r1, r2, r3), got {rank!r}")
    if min(ranks) < 1:
        raise ValueError(f"{who}: ranks must be >= 1, got {rank!r}")
    if mode != "stt" and len(set(ranks)) != 1:
        raise ValueError(f"{who}: mode {mode!r} needs one rank (G2 and G3 both read G1's output), "
                         f"got {rank!r}; three different ranks need mode='stt'")
    return ranks


def as_images(x: torch.Tensor, in_channels: int, timesteps: Optional[int], who: str):
    """Accept ``[T, B, C, H, W]`` or ``[T*B, C, H, W]``: returns ``(images [N, C, H, W], T or
    None, output shape prefix)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: input must be a tensor, got {type(x).__name__}")
    if x.dim() == 5:
        if timesteps is not None and x.shape[0] != timesteps:
            raise ValueError(f"{who}: input has {x.shape[0]} timesteps (dim 0 of [T, B, C, H, W]) "
                             f"but the layer was built with timesteps={timesteps}")
        steps, lead = x.shape[0], tuple(x.shape[:2])
        x4 = x.flatten(0, 1)
    elif x.dim() == 4:
        steps, lead = timesteps, (x.shape[0],)
        x4 = x
        if steps is not None and x.shape[0] % steps:
            raise ValueError(f"{who}: input [T*B, C, H, W] has {x.shape[0]} images, not a multiple "
                             f"of timesteps={steps}")
    else:
        raise ValueError(f"{who}: input must be [T, B, C, H, W] or [T*B, C, H, W], got shape {tuple(x.shape)}")
    if x4.shape[1] != in_channels:
        raise ValueError(f"{who}: expected {in_channels} input channels (dim -3), got {x4.shape[1]} "
                         f"(input shape {tuple(x.shape)})")
    if not x4.is_floating_point():
        raise TypeError(f"{who}: input must be floating point, got {x4.dtype}")
    return x4, steps, lead


def _resolve_schedule(mode: str, schedule: Optional[list], fixed_steps: Optional[int], steps: Optional[int],
                      who: str) -> list:
    if mode != "htt":
        return []
    if steps is None:
        raise ValueError(f"{who}: mode 'htt' needs the timesteps: give a [T, B, C, H, W] input, or build "
                         f"the layer with timesteps=T (or a schedule) for [T*B, C, H, W] inputs")
    if schedule is None:
        return default_schedule(steps)
    if len(schedule) != steps:
        raise ValueError(f"{who}: the schedule has {len(schedule)} entries but the input has {steps} timesteps")
    return schedule


class _TimeLayout(nn.Module):
    """Input-format and schedule handling shared by the TT layer and its merged form."""

    def _setup_time(self, mode, schedule, timesteps, who):
        sched = parse_schedule(schedule, who)
        if timesteps is not None:
            if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
                raise ValueError(f"{who}: timesteps must be a positive int or None, got {timesteps!r}")
            if sched is not None and len(sched) != timesteps:
                raise ValueError(f"{who}: the schedule has {len(sched)} entries but timesteps={timesteps}")
        if sched is not None:
            if mode != "htt":
                raise ValueError(f"{who}: a schedule only applies to mode 'htt', got mode {mode!r}")
            timesteps = len(sched) if timesteps is None else timesteps
        self.schedule = sched
        self.timesteps = timesteps

    def schedule_for(self, steps: Optional[int]) -> list:
        """The list of full (True) / half (False) steps used for an input of ``steps`` timesteps."""
        return _resolve_schedule(self.mode, self.schedule, self.timesteps, steps, type(self).__name__)

    def _restore(self, y4, lead):
        return y4.view(*lead, *y4.shape[1:])


class TTConv2d(_TimeLayout):
    """A 3x3 convolution (stride 1, padding 1) in tensor-train form, as in TT-SNN.

    Args:
        in_channels, out_channels: as ``nn.Conv2d``.
        rank: one rank ``r`` (all modes), a tuple ``(r1, r2, r3)`` (STT only), or
            ``'vbmf'`` (with ``weight``: ranks estimated by EVBMF, Nakajima et al. 2013).
        mode: ``'stt'`` (G1 -> G2 -> G3 -> G4), ``'ptt'`` (G4((G2 + G3)(G1 x) / 2)) or
            ``'htt'`` (PTT at full timesteps, G4(G1 x) at half ones).
        schedule: HTT only: ``'FFHH'``-style string or a list of bools (True = full).
            Default: full for the first ``ceil(T/2)`` steps.
        timesteps: T, needed for ``[T*B, C, H, W]`` inputs in HTT mode (checked otherwise).
        pool: a 2x2 max-pool after G4 (the authors' replacement of a stride-2 3x3 conv).
        bias: a per-channel bias after G4 (and after the pool).
        weight: a dense 3x3 weight ``[Cout, Cin, 3, 3]`` to initialize the cores from by
            TT-SVD; without it the cores are kaiming-uniform (``nn.Conv2d``'s default), as
            the authors train them from scratch.
        spiking: the input holds 0/1 spikes (the default: a TT layer follows a LIF in
            an SNN). G1 then reads them bit-packed inside the fused kernel and the layer
            keeps 1 bit per input value for backward. False: any real-valued input (G1
            is a float GEMM and the rank-r map G1(x) is kept for backward).
        backend: ``'snnops'`` (fused kernels) or ``'reference'`` (separate ``F.conv2d``).

    Input ``[T, B, Cin, H, W]`` or ``[T*B, Cin, H, W]`` (time-major); the output has the
    same layout with ``Cout`` channels (and H, W halved, floor, with ``pool``), channels-last
    in memory. Spikes may also come bit-packed along the channels (``snnops.pack_spikes``
    format: int32 ``[T, B, H, W, words]`` / ``[T*B, H, W, words]``), as the input itself
    (no gradient to the spikes) or as ``forward(x, packed=...)`` next to the float spikes
    ``x`` that receive the gradient.
    Cores are conv weights: ``g1 [r1, Cin, 1, 1]``, ``g2 [r2, r1, 3, 1]``,
    ``g3 [r3, r2, 1, 3]``, ``g4 [Cout, r3, 1, 1]``.
    """

    def __init__(self, in_channels: int, out_channels: int, rank: Union[int, Sequence[int], str],
                 mode: str = "ptt", *, schedule=None, timesteps: Optional[int] = None, pool: bool = False,
                 bias: bool = False, weight: Optional[torch.Tensor] = None, spiking: bool = True,
                 backend: str = "snnops", device=None, dtype=None):
        super().__init__()
        who = "snnops.nn.TTConv2d"
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{who}: {name} must be a positive int, got {v!r}")
        if mode not in MODES:
            raise ValueError(f"{who}: unknown mode {mode!r}; choose from {MODES}")
        if backend not in ("snnops", "reference"):
            raise ValueError(f"{who}: backend must be 'snnops' or 'reference', got {backend!r}")
        self.in_channels, self.out_channels, self.mode = in_channels, out_channels, mode
        self.pool, self.backend, self.spiking = flag(who, "pool", pool), backend, flag(who, "spiking", spiking)
        bias = flag(who, "bias", bias)
        self._setup_time(mode, schedule, timesteps, who)
        ranks = _check_ranks(rank, mode, who)
        cores = None
        if weight is not None:
            if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (out_channels, in_channels, 3, 3):
                got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
                raise ValueError(f"{who}: weight must be a dense 3x3 kernel of shape "
                                 f"{(out_channels, in_channels, 3, 3)}, got {got}")
            from ..tt.decompose import cores_from_dense  # floor 4 math, only needed here
            cores = cores_from_dense(weight.detach(), ranks, mode)
            ranks = tuple(c.shape[0] for c in cores[:3])
        elif ranks == "vbmf":
            raise ValueError(f"{who}: rank='vbmf' estimates ranks from a trained dense kernel: pass weight=, "
                             f"or use snnops.tt.decompose(conv, ranks='vbmf')")
        self.ranks = ranks
        r1, r2, r3 = ranks
        fk = dict(device=device, dtype=dtype)
        self.g1 = nn.Parameter(torch.empty(r1, in_channels, 1, 1, **fk))
        self.g2 = nn.Parameter(torch.empty(r2, r1, 3, 1, **fk))
        self.g3 = nn.Parameter(torch.empty(r3, r2, 1, 3, **fk))
        self.g4 = nn.Parameter(torch.empty(out_channels, r3, 1, 1, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.reset_parameters()
        if cores is not None:
            with torch.no_grad():
                for p, c in zip((self.g1, self.g2, self.g3, self.g4), cores):
                    p.copy_(c)

    @property
    def rank(self) -> int:
        return self.ranks[0] if len(set(self.ranks)) == 1 else self.ranks

    def reset_parameters(self):
        """Kaiming-uniform cores (``nn.Conv2d``'s initialization, as the authors' code)."""
        for g in (self.g1, self.g2, self.g3, self.g4):
            nn.init.kaiming_uniform_(g, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * 9)
            nn.init.uniform_(self.bias, -bound, bound)

    def cores(self):
        return self.g1, self.g2, self.g3, self.g4

    def forward(self, x: torch.Tensor, packed: Optional[torch.Tensor] = None) -> torch.Tensor:
        who = "snnops.nn.TTConv2d"
        if isinstance(x, torch.Tensor) and x.dtype == torch.int32:
            if packed is not None:
                raise ValueError(f"{who}: give the packed spikes either as the input or as packed=, not both")
            packed, x = x, None
        if packed is not None and not self.spiking:
            raise ValueError(f"{who}: packed spikes need a spiking layer (built with spiking=False)")
        if x is not None:
            x4, steps, lead = as_images(x, self.in_channels, self.timesteps, who)
        p4 = None
        if packed is not None:
            p4, p_steps, p_lead = _packed_images(packed, self.in_channels, self.timesteps, who)
            if x is None:
                steps, lead = p_steps, p_lead
            elif tuple(p4.shape[:3]) != (x4.shape[0], *x4.shape[2:]):
                raise ValueError(f"{who}: packed spikes {tuple(packed.shape)} do not match the input {tuple(x.shape)}")
        schedule = self.schedule_for(steps)
        kw = dict(parallel=self.mode != "stt", schedule=schedule, pool=self.pool)
        if self.backend == "reference":
            if x is None:
                x4 = unpack_spikes(p4, self.in_channels, dim=1, dtype=self.g1.dtype)
            y = reference.tt_layer(x4, *self.cores(), **kw)
        elif self.spiking:
            y = _fused_tt_conv(None if x is None else x4, *self.cores(), packed=p4, **kw)
        else:
            y = _fused_tt_conv(x4, *self.cores(), spiking=False, **kw)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return self._restore(y, lead)

    # ---------------------------------------------------------------- merge
    def to_dense(self) -> "MergedTTConv2d":
        """The exactly equivalent ordinary layer: STT -> a full 3x3 conv; PTT -> a 3x3
        conv with zero corners; HTT -> that cross kernel at full steps and the 1x1
        ``G4 G1`` at half steps, with the same schedule; then the max-pool if any."""
        with torch.no_grad():
            cores = [g.detach() for g in self.cores()]
            full = reference.merge_stt(*cores) if self.mode == "stt" else reference.merge_ptt(*cores)
            half = reference.merge_half(cores[0], cores[3]) if self.mode == "htt" else None
            merged = MergedTTConv2d(full, half, mode=self.mode, schedule=self.schedule,
                                    timesteps=self.timesteps, pool=self.pool,
                                    bias=None if self.bias is None else self.bias.detach())
        return merged.train(self.training)

    # ---------------------------------------------------------------- counting
    def macs(self, input_shape) -> int:
        """Multiply-accumulates of one call on an input of ``input_shape`` (all images,
        all timesteps): ``H*W*(r1*Cin + 3*r1*r2 + 3*r2*r3 + r3*Cout)`` per full image
        (the paper's count at the input resolution; the pool is free) and
        ``H*W*r*(Cin + Cout)`` per HTT half-step image."""
        shape = tuple(input_shape)
        steps = shape[0] if len(shape) == 5 else self.timesteps
        images = shape[0] * shape[1] if len(shape) == 5 else shape[0]
        hw = shape[-2] * shape[-1]
        r1, r2, r3 = self.ranks
        full_cost = hw * (r1 * self.in_channels + 3 * r1 * r2 + 3 * r2 * r3 + r3 * self.out_channels)
        half_cost = hw * (r1 * self.in_channels + r3 * self.out_channels)
        sched = self.schedule_for(steps)
        if not sched:
            return images * full_cost
        per_step = images // len(sched)
        return sum(per_step * (full_cost if f else half_cost) for f in sched)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, rank={self.rank}, mode={self.mode!r}"
        if self.mode == "htt":
            sched = "".join("F" if f else "H" for f in self.schedule) if self.schedule else "default"
            s += f", schedule={sched}"
        if self.timesteps is not None:
            s += f", timesteps={self.timesteps}"
        if self.pool:
            s += ", pool=True"
        if self.bias is not None:
            s += ", bias=True"
        if not self.spiking:
            s += ", spiking=False"
        if self.backend != "snnops":
            s += f", backend={self.backend!r}"
        return s


def _packed_images(packed, in_channels, timesteps, who):
    """Packed spikes ``[T, B, H, W, words]`` or ``[T*B, H, W, words]`` -> ``(images, T, lead)``."""
    words = (in_channels + 31) // 32
    if packed.dim() not in (4, 5) or packed.shape[-1] != words:
        raise ValueError(f"{who}: packed spikes must be int32 [T, B, H, W, {words}] or [T*B, H, W, {words}] "
                         f"for {in_channels} channels, got shape {tuple(packed.shape)}")
    if packed.dim() == 5:
        if timesteps is not None and packed.shape[0] != timesteps:
            raise ValueError(f"{who}: packed input has {packed.shape[0]} timesteps but the layer was built with "
                             f"timesteps={timesteps}")
        return packed.flatten(0, 1), packed.shape[0], tuple(packed.shape[:2])
    if timesteps is not None and packed.shape[0] % timesteps:
        raise ValueError(f"{who}: packed input has {packed.shape[0]} images, not a multiple of timesteps={timesteps}")
    return packed, timesteps, (packed.shape[0],)


class MergedTTConv2d(_TimeLayout):
    """What a :class:`TTConv2d` merges into: one ordinary 3x3 convolution (``.conv``),
    plus, for HTT, the 1x1 convolution of its half steps (``.half_conv``), then the 2x2
    max-pool if the TT layer had one. Takes the same inputs as the TT layer."""

    def __init__(self, full_weight: torch.Tensor, half_weight: Optional[torch.Tensor] = None, *,
                 mode: str = "ptt", schedule=None, timesteps: Optional[int] = None, pool: bool = False,
                 bias: Optional[torch.Tensor] = None):
        super().__init__()
        who = "snnops.nn.MergedTTConv2d"
        if mode not in MODES:
            raise ValueError(f"{who}: unknown mode {mode!r}; choose from {MODES}")
        if (half_weight is not None) != (mode == "htt"):
            raise ValueError(f"{who}: half_weight is required for mode 'htt' and only for it")
        self.mode, self.pool = mode, flag(who, "pool", pool)
        self._setup_time(mode, schedule, timesteps, who)
        cout, cin = full_weight.shape[:2]
        self.in_channels, self.out_channels = cin, cout
        fk = dict(device=full_weight.device, dtype=full_weight.dtype)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias is not None, **fk)
        self.half_conv = nn.Conv2d(cin, cout, 1, bias=bias is not None, **fk) if half_weight is not None else None
        with torch.no_grad():
            self.conv.weight.copy_(full_weight)
            if bias is not None:
                self.conv.bias.copy_(bias)
            if self.half_conv is not None:
                self.half_conv.weight.copy_(half_weight)
                if bias is not None:
                    self.half_conv.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4, steps, lead = as_images(x, self.in_channels, self.timesteps, "snnops.nn.MergedTTConv2d")
        schedule = self.schedule_for(steps)
        if not schedule or all(schedule):
            y = self.conv(x4)
        else:
            per = x4.shape[0] // len(schedule)
            y = torch.cat([(self.conv if full else self.half_conv)(x4[t * per:(t + 1) * per])
                           for t, full in enumerate(schedule)])
        if self.pool:
            y = torch.nn.functional.max_pool2d(y, 2)
        return self._restore(y, lead)

    def extra_repr(self):
        s = f"mode={self.mode!r}"
        if self.mode == "htt" and self.schedule:
            s += ", schedule=" + "".join("F" if f else "H" for f in self.schedule)
        if self.pool:
            s += ", pool=True"
        return s
