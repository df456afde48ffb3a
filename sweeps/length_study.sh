#!/usr/bin/env bash
# The length study end to end: DiDeMo-style synthetic data at three lengths, one frame tower, feature caches, the
# sweep (length x head x seed), and the report. Run from the repository root:  bash sweeps/length_study.sh
# Sizes can be changed through the environment (TRAIN, VAL, TEST videos per length; TOWER_EPOCHS).
set -euo pipefail
G=${GLCCL:-glccl}
ROOT=${ROOT:-data/length-study}
TRAIN=${TRAIN:-1200}; VAL=${VAL:-100}; TEST=${TEST:-500}; TOWER_EPOCHS=${TOWER_EPOCHS:-8}
COMMON="--layout didemo --fps 4 --size 32 --num-train $TRAIN --num-val $VAL --num-test $TEST --seed 0 --quiet"

# 1. data: the share of the video a paragraph describes shrinks as the videos get longer
[ -f "$ROOT/K12/synth_meta.json" ] || $G data synth $COMMON --out "$ROOT/K12" --events 3-4 --described 2-2 --seconds 8
[ -f "$ROOT/K32/synth_meta.json" ] || $G data synth $COMMON --out "$ROOT/K32" --events 6-8 --described 2-3 --seconds 16
[ -f "$ROOT/K64/synth_meta.json" ] || $G data synth $COMMON --out "$ROOT/K64" --events 10-14 --described 2-4 --seconds 32

# 2. frame caches: exactly the K frames each trial samples (cache factor 1), 32 px
for LK in K12:12 K32:32 K64:64; do
  L=${LK%%:*}; K=${LK##*:}
  [ -f "$ROOT/$L/frames/test/meta.json" ] || $G data prepare --dataset didemo --root "$ROOT/$L" --out "$ROOT/$L/frames" \
      --num-frames "$K" --size 32 --cache-factor 1 --quiet
done

# 3. one frame tower for every length (the same renderer draws every event): MeanP trained end to end on the short
#    videos' pixels, then frozen
if [ ! -f "$ROOT/tower.pt" ]; then
  $G train --config configs/length_study.yaml name=length-study-tower model.head=meanp model.pretrained=null \
      data.root="$ROOT/K12" data.cache="$ROOT/K12/frames" model.num_frames=12 train.epochs="$TOWER_EPOCHS" \
      train.num_workers=2
  cp runs/length-study-tower/best_model.pt "$ROOT/tower.pt"
fi

# 4. feature caches: the tower's per-frame features, computed once
for LK in K12:12:32 K32:32:48 K64:64:64; do
  IFS=: read -r L K NW <<<"$LK"
  [ -f "$ROOT/$L/features/test/meta.json" ] || $G data features --config configs/length_study.yaml --out "$ROOT/$L/features" \
      data.root="$ROOT/$L" data.cache="$ROOT/$L/frames" model.pretrained="$ROOT/tower.pt" model.num_frames="$K" \
      model.max_words="$NW" --quiet
done

# 5. the study and its report
$G sweep --config sweeps/length_study.yaml
$G report --sweep length-study --out reports/length-study
