#!/usr/bin/env bash
# The README's "Objectives, variances, solvers and classifier-free guidance" tables on
# Fashion-MNIST: four small28 models trained for the same number of steps with the same seed,
# then every table at one N and one seed, with the real-data floor at that N.
#   scripts/compare-fashion.sh [DIR]        (default runs/compare; DIR/logs holds every output)
# Needs Fashion-MNIST (scripts/install-data.sh) and the FID Inception weights
# (scripts/get-fid-weights.sh or DDPM_INCEPTION). Work runs in two lanes of one thread each, so
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
N=${N:-500}              # samples per FID row, and the floor's N
STEPS=${STEPS:-1500}     # training steps per model
NLL_N=${NLL_N:-64}       # test images of the NLL bound
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
    --checkpoint-every 500 --seed 0 --quiet "$@"
}
fid() { # fid RUN TAG ARGS…
  local model=$1 tag=$2; shift 2
  run "fid-$model-$tag" eval fid --run "$DIR/$model" --n "$N" --seed 1 --tag "$tag-n$N" "$@"
}

lane_a() {
  train eps
  run floor fid fashion-mnist@train fashion-mnist@test --n "$N"
  for s in 10 20; do
    fid eps "ddim$s" --sampler ddim --steps "$s"
    fid eps "dpmpp$s" --sampler dpm-solver++ --steps "$s"
    fid eps "heun$s" --sampler heun --steps "$s"
  done
  fid eps ddim50-eta1 --sampler ddim --steps 50 --eta 1
  run nll-eps eval nll --run "$DIR/eps" --data fashion-mnist --split test --n "$NLL_N"
  fid eps ddpm1000 --sampler ddpm
}

lane_b() {
  train cc --class-cond
  [ -d "$DIR/judge" ] || run train-judge classifier train --run "$DIR/judge" --data fashion-mnist \
    --clean --hflip --steps 1000 --quiet
  train v --prediction v
  train hybrid --variance learned
  # w = 1 is the conditional model itself (one network call); the others use CFG's doubled call.
  fid cc w1 --sampler ddim --steps 20 --judge "$DIR/judge"
  for w in 0 3 5; do
    fid cc "w$w" --sampler ddim --steps 20 --cfg-scale "$w" --judge "$DIR/judge"
  done
  fid v ddim20 --sampler ddim --steps 20
  fid v dpmpp20 --sampler dpm-solver++ --steps 20
  fid hybrid ddim20 --sampler ddim --steps 20
  fid hybrid ddim50-eta1 --sampler ddim --steps 50 --eta 1
  run nll-hybrid eval nll --run "$DIR/hybrid" --data fashion-mnist --split test --n "$NLL_N"
}

lane_a > "$DIR/logs/lane-a.txt" 2>&1 &
A=$!
lane_b > "$DIR/logs/lane-b.txt" 2>&1 &
B=$!
wait $A $B
echo "done in $(( $(date +%s) - T0 )) s; lanes: $DIR/logs/lane-a.txt, $DIR/logs/lane-b.txt"
