"""The package degrades to the PyTorch references when the native extension is absent,
and says which implementation each op runs."""
import subprocess
import sys
import textwrap

import snnops


def test_backends_report_every_op():
    backends = snnops.backends()
    assert "lif_fwd" in backends and "lif_bwd" in backends
    for op, impl in backends.items():
        assert set(impl) == {"cpu", "cuda"}, op
        assert impl["cpu"] in ("C++ (avx512)", "C++ (avx2)", "C++ (generic)", "reference"), (op, impl)
    assert snnops.cpu_isa() in ("avx512", "avx2", "generic", "reference")


def test_star_import_names_every_public_function():
    """``from snnops import *`` gives every public function of the package: each public
    callable at the top level is in ``__all__``, and each name there exists."""
    public = {name for name in dir(snnops) if not name.startswith("_") and callable(getattr(snnops, name))}
    assert public <= set(snnops.__all__), sorted(public - set(snnops.__all__))
    assert all(hasattr(snnops, name) for name in snnops.__all__)


def test_without_native_extension_every_op_runs_the_reference_and_warns_once():
    code = textwrap.dedent("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import snnops
            import snnops.nn
        native = [w for w in caught if "native CPU kernels unavailable" in str(w.message)]
        assert len(native) == 1, [str(w.message) for w in caught]
        assert all(v["cpu"] == "reference" for v in snnops.backends().values()), snnops.backends()
        assert snnops.cpu_isa() == "reference"
        import torch
        from snnops import reference
        x = torch.randn(4, 3, 20, requires_grad=True)
        s, v = snnops.lif(x, decay=0.25, v_threshold=0.5, surrogate="rect", detach_reset=True)
        rs, rv = reference.lif(x, None, decay=0.25, input_scale=1.0, v_threshold=0.5, v_reset=0.0,
                               surrogate="rect", detach_reset=True)
        assert torch.equal(s, rs) and torch.equal(v, rv)
        (g,) = torch.autograd.grad(s.sum() + v.sum(), x)
        (rg,) = torch.autograd.grad(rs.sum() + rv.sum(), x)
        torch.testing.assert_close(g, rg)
        print("ok")
    """)
    env = {"SNNOPS_DISABLE_NATIVE": "1", "PATH": "/usr/bin:/bin"}
    import os
    env.update({k: v for k, v in os.environ.items() if k not in env})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
