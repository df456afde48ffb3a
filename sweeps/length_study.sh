#!/usr/bin/env bash
# The length study end to end: DiDeMo-style synthetic data at three lengths, one frame tower, feature caches, the
# sweep (length x head x seed), and the report. Run from the repository root:  bash sweeps/length_study.sh
# Sizes can be changed through the environment (TRAIN, VAL, TEST videos per length; TOWER_TRAIN videos and TOWER_EPOCHS
# for the frame tower).
set -euo pipefail
G=${GLCCL:-glccl}
ROOT=${ROOT:-data/length-study}
TRAIN=${TRAIN:-2000}; VAL=${VAL:-100}; TEST=${TEST:-500}; TOWER_TRAIN=${TOWER_TRAIN:-2000}; TOWER_EPOCHS=${TOWER_EPOCHS:-8}
COMMON="--fps 4 --size 32 --num-val $VAL --quiet"

# 1. data. The frame tower's pretraining set: short clips (3-4 events in 8 s) captioned event by event and pair by pair
#    (the MSVD-style layout), a stand-in for CLIP's image-text pretraining. The study's three lengths (DiDeMo layout):
#    as in DiDeMo's protocol the paragraph query joins every moment description of the video, so the query grows
#    with the video (about 20, 38 and 59 tokens)
[ -f "$ROOT/tower/synth_meta.json" ] || $G data synth $COMMON --seed 7 --num-train "$TOWER_TRAIN" --num-test 100 \
    --out "$ROOT/tower" --events 3-4 --seconds 8
STUDY="$COMMON --layout didemo --seed 0 --num-train $TRAIN --num-test $TEST"
[ -f "$ROOT/K12/synth_meta.json" ] || $G data synth $STUDY --out "$ROOT/K12" --events 3-4 --seconds 8
[ -f "$ROOT/K32/synth_meta.json" ] || $G data synth $STUDY --out "$ROOT/K32" --events 6-8 --seconds 16
[ -f "$ROOT/K64/synth_meta.json" ] || $G data synth $STUDY --out "$ROOT/K64" --events 10-12 --seconds 32

# 2. frame caches: exactly the K frames each trial samples (cache factor 1), 32 px
[ -f "$ROOT/tower/frames/test/meta.json" ] || $G data prepare --dataset msvd --root "$ROOT/tower" \
    --out "$ROOT/tower/frames" --num-frames 12 --size 32 --cache-factor 1 --quiet
for LK in K12:12 K32:32 K64:64; do
  L=${LK%%:*}; K=${LK##*:}
  [ -f "$ROOT/$L/frames/test/meta.json" ] || $G data prepare --dataset didemo --root "$ROOT/$L" --out "$ROOT/$L/frames" \
      --num-frames "$K" --size 32 --cache-factor 1 --quiet
done

# 3. one frame tower for every length (the same renderer draws every event): MeanP trained end to end on the
#    pretraining set's pixels, then frozen
if [ ! -f "$ROOT/tower.pt" ]; then
  $G train --config configs/length_study.yaml name=length-study-tower model.head=meanp model.pretrained=null \
      data.dataset=msvd data.root="$ROOT/tower" data.cache="$ROOT/tower/frames" \
      model.num_frames=12 model.max_words=32 train.epochs="$TOWER_EPOCHS" scaling.num_workers=2
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
