#!/usr/bin/env bash
# Set up snnops on this machine: reuse an installed torch, else the CPU build of
# torch 2.13.0 (never a bare "torch", which would pull a multi-GB CUDA wheel), then
# build the native extension against it. Idempotent; safe to run before every job.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
# Build and test tools, and the libraries the CLI uses (progress bars, charts, the
# digits data set). numpy first: torch warns at import without it.
"$PY" -m pip install --quiet numpy ninja pybind11 "setuptools>=64" wheel \
  pytest pytest-benchmark hypothesis tqdm matplotlib scikit-learn
# Triton runs the GPU kernels (and, under TRITON_INTERPRET=1, their CPU tests).
# Its pip package does not depend on torch, so installing it cannot replace torch.
"$PY" -m pip install --quiet triton || echo "install.sh: triton unavailable; the GPU kernels' tests will be skipped"
"$PY" -m pip install --quiet --no-build-isolation --use-pep517 -e .
"$PY" -c "import snnops; print('snnops', snnops.__version__, 'cpu kernels:', snnops.cpu_isa())"
