"""Loading the native extension, and which implementation each op runs.

A missing or stale ``snnops._C`` never breaks ``import snnops``: every op then runs
its PyTorch reference, with one warning naming the reason.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

_C = None
_REASON = None

if os.environ.get("SNNOPS_DISABLE_NATIVE", "0") not in ("", "0"):
    _REASON = "disabled by SNNOPS_DISABLE_NATIVE"
else:
    try:
        from . import _C  # noqa: F811  (registers the CPU kernels with the dispatcher)
    except ImportError as exc:  # not built (SNNOPS_SKIP_NATIVE=1) or built for another torch
        _REASON = (f"{exc} (snnops._C must be built against the installed torch {torch.__version__}; "
                   "reinstall with: pip install --no-build-isolation --use-pep517 -e .)")

if _C is None:
    warnings.warn(f"snnops: native CPU kernels unavailable, ops run the PyTorch reference: {_REASON}",
                  RuntimeWarning, stacklevel=2)

HAS_NATIVE = _C is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None


def cpu_isa() -> str:
    """'avx512', 'avx2', 'generic' (portable C++), or 'reference' (no native extension)."""
    return _C.cpu_isa() if _C is not None else "reference"


def cpu_cache_stats() -> dict:
    """The CPU kernels' output block cache: bytes alive and cached, hits, misses, cap."""
    if _C is None:
        return {"allocated_bytes": 0, "cached_bytes": 0, "hits": 0, "misses": 0, "cap_bytes": 0}
    return _C.cpu_cache_stats()


def cache_all_cpu_tensors(enabled: bool = True) -> None:
    if _C is None:
        raise RuntimeError(f"snnops.cache_all_cpu_tensors needs the native extension: {_REASON}")
    _C.cpu_cache_global(bool(enabled))


def caches_all_cpu_tensors() -> bool:
    return bool(_C is not None and _C.cpu_cache_is_global())


def empty_cache() -> int:
    """Return the cached CPU blocks to the system; the number of bytes freed."""
    return _C.cpu_cache_release() if _C is not None else 0
