#!/usr/bin/env bash
# The SNN libraries the benchmarks compare against (SpikingJelly, snnTorch, Norse), at
# the versions the measurements in docs/ were taken with. Run after scripts/install.sh.
# Installed without their declared dependencies: SpikingJelly and Norse name torchvision
# (and torchaudio), whose pins on torch can replace the installed CPU torch with a
# multi-GB build. What their neuron modules import is installed instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install-references.sh: no torch here; run scripts/install.sh first" >&2
  exit 1
fi
"$PY" -m pip install --quiet --no-deps spikingjelly==2.0.0 snntorch==1.0.0 norse==1.1.0 nir nirtorch
# pip then lists the skipped torchvision / torchaudio / plotting requirements as
# conflicts; the neuron modules do not import them.
"$PY" -m pip install --quiet loguru h5py
"$PY" - <<'EOF'
import importlib.metadata as md

import torch
from spikingjelly.activation_based import neuron  # noqa: F401
import snntorch  # noqa: F401
import norse.torch  # noqa: F401

print("torch", torch.__version__, "|", ", ".join(f"{d} {md.version(d)}" for d in ("spikingjelly", "snntorch", "norse")))
EOF
