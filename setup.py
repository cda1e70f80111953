"""Build snnops and its one native extension, snnops._C.

SNNOPS_SKIP_NATIVE=1 skips the C++ build: every op then runs its PyTorch
reference (snnops warns once at import).
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = [p for p in find_packages(include=["snnops", "snnops.*"])] + ["snnops.kernels"]
PACKAGE_DIR = {"snnops": "snnops", "snnops.kernels": "kernels"}


def native_extensions():
    if os.environ.get("SNNOPS_SKIP_NATIVE", "0") not in ("", "0"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    # at::parallel_for is inlined into our code as an OpenMP region, so compile with
    # -fopenmp, but link to the libgomp that ships inside torch (not the system one) so
    # there is exactly one OpenMP thread pool in the process.
    link = []
    gomp = os.path.join(torch_lib, "libgomp.so.1")
    if os.path.exists(gomp):
        link = [gomp, "-Wl,-rpath," + torch_lib]
    compile_args = [
        "-O3",
        "-std=c++17",
        "-fopenmp",
        # Kernels must round exactly like the PyTorch reference (spikes are compared
        # bit-exactly at the threshold): no silent a*b+c -> fma contraction.
        "-ffp-contract=off",
        "-fno-math-errno",
        # torch 2.13 headers use a few C++20 conveniences that g++ accepts in C++17 mode
        "-Wno-c++20-extensions",
    ]
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    ext = CppExtension(
        "snnops._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=compile_args,
        extra_link_args=link,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extensions()

setup(
    name="snnops",
    version="0.1.0",
    description="Fused kernels for training spiking neural networks fast and in little memory",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    python_requires=">=3.9",
    # No hard torch pin here: a bare "torch" requirement would let pip replace the
    # installed CPU build with a multi-GB CUDA wheel. scripts/install.sh installs torch.
    install_requires=["numpy"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["snnops=snnops.cli:main"]},
    zip_safe=False,
)
