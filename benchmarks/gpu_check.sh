#!/usr/bin/env bash
# Issue 26, item 5: the GPU checks and CPU-vs-GPU epoch times, as one script for a machine with a CUDA GPU
# (no GPU was lent to the session that wrote it; BENCHMARKS.md says which figures are still to measure).
#   bash benchmarks/gpu_check.sh [OUT]      # OUT: where the MOSI runs go (default runs/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/gpu-check}
mkdir -p "$OUT"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))"
$PY -m pytest -m gpu -p no:cacheprovider tests/test_gpu.py            # every deep method on CUDA vs the CPU
for dev in cpu cuda; do                                              # fusion at IEMOCAP size, ConflictNET at SSPNet size
  $PY benchmarks/fusion_epoch.py --threads 2 --batches 5 --device $dev
  $PY benchmarks/conflictnet_epoch.py --threads 2 --batches 2 --device $dev
done
if [ -d ../shared/data/cmu-mosi-utterance ]; then                    # MOSI text teacher + CM-StEW video, per epoch
  for acc in cpu gpu; do
    { cat configs/mosi.yaml; printf 'max_epochs: 150\npatience: 20\nval_from: test\naccelerator: %s\n' $acc; } \
      | grep -v -e '^max_epochs: 400' -e '^patience: 60' > "$OUT/mosi-$acc.yaml"
    $PY benchmarks/profile_mosi.py --out "$OUT/$acc" --config "$OUT/mosi-$acc.yaml" --runs text,cmstew-video
  done
fi
