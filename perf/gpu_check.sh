#!/usr/bin/env bash
# One prepared device check of at most 5 minutes: MGFR at sd21-base scale on one GPU with
# random weights (fp16, 512 px, the profile's denoising step, 20 stage-1 training steps,
# peak memory, step ratios against a bare UNet), printed as one table. Without CUDA it says
# so and runs a reduced CPU variant (perf/gpu_check.py --cpu). Extra arguments go to
# perf/gpu_check.py.
#
#   bash perf/gpu_check.sh            # PYTHON=... to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 300 "$PY" perf/gpu_check.py "$@"
