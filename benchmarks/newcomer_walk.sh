#!/usr/bin/env bash
# The newcomer walk (issue 18): a fresh clone, the README's two commands, then every command of
# "Using stew" once, each timed. Results go to BENCHMARKS.md.
#
#   bash benchmarks/newcomer_walk.sh WORKDIR [MOSI_DIR]
#
# To keep the walk to minutes on 2 cores, DIR is a small synthetic RECOLA-like set (9 speakers x 1 min,
# not the 27 x 5 min default, which is about 1 GB and needs about 5 GB of memory per epoch), training
# commands get --max-epochs 3 (or a config with max_epochs: 3), and rank/transfer use 2 seeds; the
# CM-StEW example, which needs a text modality, runs on the CMU-MOSI train split.
set -uo pipefail
WORK=$(realpath -m "${1:?usage: newcomer_walk.sh WORKDIR [MOSI_DIR]}")
MOSI=$(realpath "${2:-$(dirname "$0")/../../shared/data/cmu-mosi-utterance}")
SRC=$(realpath "$(dirname "$0")/..")
rm -rf "$WORK" && mkdir -p "$WORK"
LOG="$WORK/walk.tsv"
printf 'seconds\texit\tcommand\n' > "$LOG"

step() {  # step CMD...: run in the clone, time it, record seconds and exit code
  local t0=$SECONDS
  (cd "$WORK/stew" && "$@") > "$WORK/step.out" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$((SECONDS - t0))" "$rc" "$*" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || tail -5 "$WORK/step.out"
}

git clone -q "$SRC" "$WORK/stew"
step make demo
step make test
R=data/recola-synth
S=.venv/bin/stew
printf 'max_epochs: 3\n' > "$WORK/stew/max3.yaml"
step $S data synth --kind recola --seed 0 --speakers 9 --minutes 1 --out $R
step $S data check "$MOSI"
step $S train --data $R --method unimodal --modality audio --arch bigru-te --seed 0 --out runs/audio --max-epochs 3
step $S rank --data $R --seeds 2 --out runs/rank --max-epochs 3
step $S train --data $R --method linear --modality audio --target arousal --out runs/linear
step $S rank --data $R --method linear --seeds 5 --out runs/rank-linear
step $S train --data "$MOSI" --method cmstew --modality audio --teacher text --seed 0 --out runs/cmstew --max-epochs 3
step $S train --data $R --method sew --modality video_geo --teacher audio --target arousal --ablation=-CCA \
  --out runs/sew --max-epochs 3
step $S transfer --data $R --method cmstew --seeds 2 --out runs/transfer --config max3.yaml
step $S train --data $R --method emobed --modality audio --teacher video_geo --target valence --out runs/emobed \
  --max-epochs 3
step $S train --data $R --method joint --modality audio --teacher video_geo --out runs/joint --max-epochs 3
step $S train --data $R --method triplet --modality audio --teacher video_geo --out runs/triplet --max-epochs 3
step $S train --data $R --method cermtl --modality all --loss ccc --targets arousal,valence --out runs/cermtl \
  --max-epochs 3
step $S train --data $R --method unimodal --arch gru --modality audio --loss ccc --postprocess --out runs/pp \
  --max-epochs 3
step $S compare runs/joint --vs runs/triplet
step $S export runs/cmstew --out models/audio
step $S predict models/audio --data "$MOSI" --out preds.csv
step $S reproduce synthetic-quick --out runs/quick
step $S report runs/quick --out quick.html
echo "walk written to $LOG"
