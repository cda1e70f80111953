"""torch.library.opcheck over every registered snnops op, in one place, so that no
op can silently lose its fake kernel, its autograd or its schema.

Each ``tests/test_<op>.py`` module defines ``opcheck_samples()`` yielding
``(op_name, args, kwargs)``; this file collects them all and fails if an op
registered in ``torch.ops.snnops`` has no sample.
"""
import importlib
import pathlib

import pytest
import torch

import snnops

_HERE = pathlib.Path(__file__).parent


def _collect():
    samples = []
    for path in sorted(_HERE.glob("test_*.py")):
        if path.stem == "test_opcheck":
            continue
        mod = importlib.import_module(path.stem)
        fn = getattr(mod, "opcheck_samples", None)
        if fn is not None:
            for name, args, kwargs in fn():
                samples.append((name, args, kwargs))
    return samples


SAMPLES = _collect()


def test_every_op_has_an_opcheck_sample():
    covered = {name for name, _, _ in SAMPLES}
    missing = set(snnops.backends()) - covered
    assert not missing, f"ops without an opcheck sample: {sorted(missing)}"


@pytest.mark.parametrize("name,args,kwargs", SAMPLES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(SAMPLES)])
def test_opcheck(name, args, kwargs):
    op = getattr(torch.ops.snnops, name)
    torch.library.opcheck(op, args, kwargs)
