#!/usr/bin/env bash
# A separate virtual environment for neural-tangents, never a dependency of ntkspec: neural-tangents
# 0.6.5 (its last release) imports `jax.core.Jaxpr`, which current JAX no longer has, so it runs here
# with the last JAX it works with. Its package imports its TensorFlow module at import time, so the
# CPU build of TensorFlow comes along (several hundred MB: this is why it is a separate venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.nt-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "jax[cpu]==0.4.23" "numpy<2" frozendict "tensorflow-cpu>=2.15,<2.18" \
    "tf2jax==0.3.6" "neural-tangents==0.6.5"
"$venv/bin/python" -c "import neural_tangents as nt, jax; print('neural-tangents', nt.__version__, 'jax', jax.__version__)"
