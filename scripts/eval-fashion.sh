#!/usr/bin/env bash
# Reproduces the README's evaluation tables for the one-hour Fashion-MNIST run (issues 3 and 4).
#   scripts/eval-fashion.sh [RUN]      (default runs/fashion; needs the two classifier runs below)
# The guidance rows need `runs/cls-noisy` (ddpm classifier train --data fashion-mnist) and the
# judge `runs/cls-clean` (… --clean --hflip). Every command appends to RUN/metrics.json.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/fashion}
DDPM=${DDPM:-./target/release/ddpm}
N=${N:-500}           # samples per row of the sampler/guidance tables
T0=$(date +%s)
say() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }

say "real-data floor at N=$N (train vs test)"
$DDPM fid fashion-mnist@train fashion-mnist@test --n "$N"

for s in 10 20 50 100; do
  say "DDIM-$s, eta 0, N=$N"
  $DDPM eval fid --run "$RUN" --n "$N" --sampler ddim --steps "$s" --tag "ddim$s-n$N"
done

say "FID-10k: DDIM-20 against the 10k test images"
$DDPM eval fid --run "$RUN" --n 10000 --sampler ddim --steps 20 --tag "ddim20-n10000"

say "NLL bound on 256 test images"
$DDPM eval nll --run "$RUN" --data fashion-mnist --split test --n 256

for s in 10 20 50 100; do
  say "DDIM-$s + 1 Langevin corrector step, N=$N"
  $DDPM eval fid --run "$RUN" --n "$N" --sampler ddim --steps "$s" --corrector-steps 1 --tag "ddim$s-pc-n$N"
done

for g in 0 1 3 10; do
  say "guidance s=$g (DDIM-50, class i mod 10), judged by the clean classifier, N=$N"
  $DDPM eval fid --run "$RUN" --n "$N" --sampler ddim --steps 50 --classifier runs/cls-noisy \
    --guidance-scale "$g" --judge runs/cls-clean --tag "guided-s$g-n$N"
done

say "DDPM-1000 (Algorithm 2), N=$N"
$DDPM eval fid --run "$RUN" --n "$N" --sampler ddpm --tag "ddpm1000-n$N"

say "real-data floor at N=10000 (train vs test)"
$DDPM fid fashion-mnist@train fashion-mnist@test --n 10000
say "done"
