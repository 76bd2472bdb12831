#!/usr/bin/env bash
# Runs ddpm's benchmark and the PyTorch/diffusers peer side by side on this machine, for the
# given presets (default: small28 cifar10), with the same batch size and thread count.
#   bench/run.sh [presets...]        env: BATCH (64), THREADS (2), ITERS (5)
# Needs: cargo; python3 with torch and diffusers==0.42.1 for the peer (skipped if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${BATCH:-64}; THREADS=${THREADS:-2}; ITERS=${ITERS:-5}
presets=("$@"); [ ${#presets[@]} -eq 0 ] && presets=(small28 cifar10)
cargo build --release -q
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; threads $THREADS, batch $BATCH"
for p in "${presets[@]}"; do
  echo "== $p: ddpm with burn-flex's own ops (--kernels burn: the 'before')"
  ./target/release/ddpm --threads "$THREADS" --kernels burn bench --preset "$p" --batch-size "$BATCH" --iters "$ITERS"
  echo "== $p: ddpm (burn-flex + src/kernels, the direct kernel by the fixed size rule: --kernels rule)"
  ./target/release/ddpm --threads "$THREADS" --kernels rule bench --preset "$p" --batch-size "$BATCH" --iters "$ITERS"
  echo "== $p: ddpm (burn-flex + src/kernels, algorithms tuned per shape on this machine: --kernels auto)"
  ./target/release/ddpm --threads "$THREADS" bench --preset "$p" --batch-size "$BATCH" --iters "$ITERS"
  echo "== $p: ddpm, Winograd F(4x4,3x3) on every 3x3 layer (--kernels winograd)"
  ./target/release/ddpm --threads "$THREADS" --kernels winograd bench --preset "$p" --batch-size "$BATCH" --iters "$ITERS"
  if grep -qw avx512_bf16 /proc/cpuinfo; then
    echo "== $p: ddpm --precision bf16 (mixed precision: bf16 convolutions, f32 sums and weights)"
    ./target/release/ddpm --threads "$THREADS" --precision bf16 bench --preset "$p" --batch-size "$BATCH" --iters "$ITERS"
  fi
  if python3 -c "import torch, diffusers" 2>/dev/null; then
    echo "== $p: PyTorch peer"
    python3 bench/pytorch_unet.py --preset "$p" --batch-size "$BATCH" --threads "$THREADS" --iters "$ITERS" 2>&1 | grep -v Warning
    if grep -qw avx512_bf16 /proc/cpuinfo; then
      echo "== $p: PyTorch peer, bf16 autocast"
      python3 bench/pytorch_unet.py --preset "$p" --batch-size "$BATCH" --threads "$THREADS" --iters "$ITERS" --precision bf16 2>&1 | grep -v Warning
    fi
  else
    echo "(PyTorch peer skipped: pip install torch diffusers==0.42.1)"
  fi
done
