"""The one ``snnops`` operator library: schemas are declared here, once.

Implementations per device:
  CPU  - the C++ kernel from ``snnops._C`` (registered by its import), or the
         PyTorch reference when the extension is absent;
  CUDA - the Triton kernel from ``snnops.kernels`` when triton is installed, else
         the PyTorch reference;
  Meta - the fake kernel, so torch.compile and FakeTensor see through the op.
"""
from __future__ import annotations

import torch

from .. import _native

LIB = torch.library.Library("snnops", "DEF")

_BACKENDS: dict[str, dict[str, str]] = {}


def define(schema: str, *, cpu_reference, cuda_kernel=None, cuda_reference=None) -> str:
    """Declare ``snnops::<name>`` and wire its non-native implementations."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    if _native.HAS_NATIVE:
        cpu = f"C++ ({_native.cpu_isa()})"
    else:
        LIB.impl(name, cpu_reference, "CPU")
        cpu = "reference"
    if cuda_kernel is not None and _native.HAS_TRITON:
        LIB.impl(name, cuda_kernel, "CUDA")
        cuda = "triton"
    else:
        LIB.impl(name, cuda_reference or cpu_reference, "CUDA")
        cuda = "reference"
    _BACKENDS[name] = {"cpu": cpu, "cuda": cuda}
    return f"snnops::{name}"


def backends() -> dict[str, dict[str, str]]:
    """Which implementation each registered op runs on each device."""
    return {k: dict(v) for k, v in _BACKENDS.items()}
