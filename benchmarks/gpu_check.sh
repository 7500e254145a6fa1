#!/usr/bin/env bash
# The GPU checks of issue 15, as one script for a machine with CUDA (e.g. the device tool's H200):
# the whole suite (its cuda-marked tests run there), the suite again with the loaders on the GPU, and one
# paper-size AWD-LSTM epoch on PTB, whose last lines give tokens/s and the epoch time.
#   benchmarks/gpu_check.sh [PTB folder, default ../shared/data/ptb]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PTB=${1:-../shared/data/ptb}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
$PY -m pytest -q -x -p no:cacheprovider 2>&1 | tail -3
$PY -m pytest -q -p no:cacheprovider -m cuda 2>&1 | tail -3
RNNKIT_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider 2>&1 | tail -3
RNNKIT_NO_PROGRESS=1 $PY -m rnnkit.cli train --corpus ptb --data "$PTB" --preset paper --bptt 70 --random-bptt \
  --epochs 1 --device cuda --out /tmp/rnnkit-gpu-ptb --overwrite --no-sample 2>&1 | tail -4
