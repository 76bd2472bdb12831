#!/usr/bin/env bash
# The README's "Objectives, variances, solvers and classifier-free guidance" tables on
# Fashion-MNIST: four small28 models trained for the same number of steps with the same seed,
# then every table at one N and one seed, with the real-data floor at that N.
#   scripts/compare-fashion.sh [DIR]        (default runs/compare; DIR/logs holds every output)
# Needs Fashion-MNIST (scripts/install-data.sh) and the FID Inception weights
# (scripts/get-fid-weights.sh or DDPM_INCEPTION); the pictures need numpy and Pillow
# (pip install numpy pillow). Work runs in two lanes of one thread each, so
# a 2-core machine runs two jobs at a time; on more cores raise THREADS.
#
# Models (STEPS steps of batch 32, lr 5e-4, 200 warm-up steps, EMA 0.995, seed 0):
#   eps     ε prediction, L_simple, fixed σ² = β (Ho et al.)
#   v       v prediction (Salimans & Ho 2022), L_simple
#   hybrid  learned variances, L_hybrid (Nichol & Dhariwal 2021)
#   cc      class-conditional ε, label dropout 0.1 (Ho & Salimans 2022)
#   judge   a clean classifier (flips) that judges the class of CFG samples
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-runs/compare}
DDPM=${DDPM:-./target/release/ddpm}
THREADS=${THREADS:-1}
N=${N:-400}              # samples per FID row, and the floor's N
STEPS=${STEPS:-1500}     # training steps per model
NLL_N=${NLL_N:-48}       # test images of the NLL bound
mkdir -p "$DIR/logs"
T0=$(date +%s)
run() { # run LOG ARGS…: one job, its output in DIR/logs/LOG.log
  local log="$DIR/logs/$1.log"; shift
  echo "== [$(( $(date +%s) - T0 )) s] start $(basename "$log" .log): ddpm $*"
  "$DDPM" --threads "$THREADS" "$@" > "$log" 2>&1
  echo "== [$(( $(date +%s) - T0 )) s] done  $(basename "$log" .log): $(grep -E 'FID|bits/dim|accuracy|steps in' "$log" | tail -n 2 | tr '\n' ' ')"
}
train() { # train NAME ARGS…
  local name=$1; shift
  [ -d "$DIR/$name" ] && return 0
  run "train-$name" train --run "$DIR/$name" --data fashion-mnist --preset small28 --batch-size 32 \
    --lr 5e-4 --warmup 200 --ema-decay 0.995 --steps "$STEPS" --sample-every 100000 \
    --checkpoint-every 500 --seed 0 --quiet --prediction eps --loss simple "$@"
}
fid() { # fid RUN TAG ARGS…
  local model=$1 tag=$2; shift 2
  run "fid-$model-$tag" eval fid --run "$DIR/$model" --n "$N" --seed 1 --tag "$tag-n$N" "$@"
}

pictures() { # SDEdit and RePaint on the ε model
  local E="$DIR/edit-inputs" P="$DIR/pictures"
  mkdir -p "$P"
  python3 scripts/make_edit_inputs.py "$E" || { echo "pictures skipped: needs numpy and Pillow"; return 0; }
  for i in 00 01 02; do
    run "sdedit-$i" sample --run "$DIR/eps" --init "$E/strokes$i.png" --strength 0.5 --n 7 \
      --sampler ddim --steps 50 --seed 2 --out "$P/sdedit-$i.png" --out-dir "$P/sdedit-$i"
  done
  for i in 00 06; do
    run "inpaint-$i" sample --run "$DIR/eps" --inpaint "$E/test$i.png" --mask "$E/mask-left.png" \
      --resample 5 --n 7 --sampler ddim --steps 50 --seed 2 --out "$P/inpaint-$i.png" --out-dir "$P/inpaint-$i"
  done
  python3 scripts/compose_rows.py "$P/sdedit.png" \
    "$E/strokes00.png,$P/sdedit-00" "$E/strokes01.png,$P/sdedit-01" "$E/strokes02.png,$P/sdedit-02"
  python3 scripts/compose_rows.py "$P/inpaint.png" \
    "$E/test00.png,masked:$E/mask-left.png:$E/test00.png,$P/inpaint-00" \
    "$E/test06.png,masked:$E/mask-left.png:$E/test06.png,$P/inpaint-06"
}

lane_a() {
  train eps
  pictures
  run floor fid fashion-mnist@train fashion-mnist@test --n "$N"
  for s in 10 20; do
    fid eps "ddim$s" --sampler ddim --steps "$s"
    fid eps "dpmpp$s" --sampler dpm-solver++ --steps "$s"
    fid eps "heun$s" --sampler heun --steps "$s"
  done
  fid eps ddim20-eta1 --sampler ddim --steps 20 --eta 1
  run nll-eps eval nll --run "$DIR/eps" --data fashion-mnist --split test --n "$NLL_N"
  fid eps ddpm1000 --sampler ddpm
}

lane_b() {
  train cc --class-cond
  mkdir -p "$DIR/pictures"
  for w in 0 3; do # one column per class
    run "cfg-grid-w$w" sample --run "$DIR/cc" --cfg-scale "$w" --n 100 --sampler ddim --steps 20 \
      --seed 1 --out "$DIR/pictures/cfg-w$w.png"
  done
  [ -d "$DIR/judge" ] || run train-judge classifier train --run "$DIR/judge" --data fashion-mnist \
    --clean --hflip --minutes 18 --quiet
  run judge-eval classifier eval --run "$DIR/judge" --data fashion-mnist --split test --n 10000
  train v --prediction v
  train hybrid --variance learned
  # w = 1 is the conditional model itself (one network call); the others use CFG's doubled call.
  fid cc w1 --sampler ddim --steps 20 --judge "$DIR/judge"
  for w in 0 3 5; do
    fid cc "w$w" --sampler ddim --steps 20 --cfg-scale "$w" --judge "$DIR/judge"
  done
  fid v ddim20 --sampler ddim --steps 20
  fid hybrid ddim20 --sampler ddim --steps 20
  fid hybrid ddim20-eta1 --sampler ddim --steps 20 --eta 1
  run nll-hybrid eval nll --run "$DIR/hybrid" --data fashion-mnist --split test --n "$NLL_N"
}

lane_a > "$DIR/logs/lane-a.txt" 2>&1 &
A=$!
lane_b > "$DIR/logs/lane-b.txt" 2>&1 &
B=$!
wait $A $B
echo "done in $(( $(date +%s) - T0 )) s; lanes: $DIR/logs/lane-a.txt, $DIR/logs/lane-b.txt"
