#!/usr/bin/env bash
# The GPU check, in one call of under 10 minutes on a machine with an NVIDIA GPU, the driver,
# the CUDA toolkit (NVRTC and its headers) and PyTorch, but no Rust and no network:
#   1. unpacks the binary that scripts/build-gpu-pack.sh built here (.gpu-pack/ddpm.xz),
#   2. `ddpm selftest --device cuda` (the device against the CPU and the exact answers),
#   3. `ddpm bench --phases` for small28 (batch 256) and cifar10 (batch 128) in fp32, against
#      bench/pytorch_unet.py --device cuda on the same GPU in fp32 and in bf16 autocast,
#   4. the FID network's images/s (on random weights of the real shapes),
# and writes everything to one report file, $OUT/gpu-report.txt (default OUT: /tmp/gpu-check).
# Usage (README.md, "GPUs"): scripts/build-gpu-pack.sh here; then there, from the repo root,
#   bash scripts/gpu-check.sh
# DEVICE (default cuda), SMALL_BATCH (256), CIFAR_BATCH (128) and ITERS (10) can be changed for
# a dry run elsewhere, e.g. `DEVICE=cpu SMALL_BATCH=4 CIFAR_BATCH=2 ITERS=1` on a CPU;
# SELFTEST_LIMIT and BENCH_LIMIT (seconds, 120 each) bound those steps, AUTOTUNE_LEVEL sets
# cubecl's autotuning, TRAIN_DATA and BUDGET add a training run (below), BF16=1 adds
# `ddpm --precision bf16 bench` for both presets (BF16_LIMIT seconds each, default 90; lower
# BENCH_LIMIT to keep one call's limits inside 600 s). With the defaults the steps' limits add
# up to 520 s (plus up to 5 s each to kill a step, and the unpacking), inside one 600 s device
# call.
# Every step has its own time limit, so one that hangs cannot eat the others' time; a failing
# step is reported and the script goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-.gpu-pack}
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
ITERS=${ITERS:-10}
mkdir -p "$OUT"
REPORT=$OUT/gpu-report.txt
: >"$REPORT"
WORK=$(mktemp -d)
START=$(date +%s)

say() { echo "$*" | tee -a "$REPORT"; }
# step LIMIT_SECONDS TITLE COMMAND...: runs it with a time limit, output into the report.
step() {
    local limit=$1 title=$2
    shift 2
    say ""
    say "== $title  [$(($(date +%s) - START)) s elapsed]"
    say "\$ $*"
    local t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" 2>&1 | grep -v -E 'UserWarning|FutureWarning|warnings\.warn' |
        tee -a "$REPORT"
    local rc=${PIPESTATUS[0]}
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && say "(stopped at its ${limit} s limit)"
    say "(exit $rc, $(($(date +%s) - t0)) s)"
    # cubecl's cache (its database with the write-ahead log and shared-memory files), after
    # every step, so that it comes back even if the call is cut short.
    if [ -d "$PACK/cubecl" ] && [ -n "$(ls -A "$PACK/cubecl")" ]; then
        tar -C "$PACK" -cJf "$OUT/cubecl-cache.tar.xz" cubecl 2>/dev/null
    fi
}

say "ddpm GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
say "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 |
    sed 's/^/gpu: /' | tee -a "$REPORT"
say "nvcc: $(nvcc --version 2>/dev/null | tail -n 2 | head -n 1)"
say "python: $(python3 -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"

# NVRTC and the headers it compiles against: cudarc searches LD_LIBRARY_PATH for libnvrtc, and
# cubecl reads the headers from $CUDA_PATH/include.
for d in /usr/local/cuda /opt/cuda; do
    if [ -z "${CUDA_PATH:-}" ] && [ -f "$d/include/cuda_fp16.h" ]; then export CUDA_PATH=$d; fi
done
for d in "${CUDA_PATH:-/usr/local/cuda}/lib64" "${CUDA_PATH:-/usr/local/cuda}/targets/x86_64-linux/lib"; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
if [ -z "${CUDA_PATH:-}" ] && command -v nvcc >/dev/null; then
    CUDA_PATH=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    export CUDA_PATH
fi
say "CUDA_PATH=${CUDA_PATH:-unset}"
say "libraries: $( (ldconfig -p 2>/dev/null | grep -o -E 'lib(cuda|nvrtc)\.so[.0-9]*' | sort -u | tr '\n' ' ') || true)"

if ! xz -dc "$PACK/ddpm.xz" >"$WORK/ddpm" 2>>"$REPORT"; then
    say "no binary at $PACK/ddpm.xz: run scripts/build-gpu-pack.sh here and carry $PACK"
    exit 1
fi
chmod +x "$WORK/ddpm"
DDPM=$WORK/ddpm
if [ -d "$PACK/whl" ] && ls "$PACK"/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$PACK"/whl/*.whl >>"$REPORT" 2>&1
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

# burn's GPU kernels are autotuned and compiled (NVRTC) on first use; on the first GPU run
# (2026-11-27, BENCHMARKS.md "GPUs") no training step finished within 170 s. cubecl reads
# cubecl.toml from the working directory: log its autotune decisions and compilations into
# $OUT, keep its cache under $PACK/cubecl and return it as $OUT/cubecl-cache.tar.xz (unpack it
# into .gpu-pack/ here so that the next call starts tuned), and set AUTOTUNE_LEVEL (minimal,
# balanced, extensive, full; cubecl's default is balanced). The check defaults to minimal,
# which groups shapes more coarsely into tuning keys, so fewer keys are tuned (each key still
# compiles and times every candidate kernel: 13 per convolution direction); its effect on the
# time is not measured yet. The cache is written only by builds with cubecl-runtime's
# `persistence` feature, which Cargo.toml's cuda and wgpu features turn on (burn leaves it
# off; before that every process tuned every shape again and the cache folder stayed empty,
# as a lavapipe run showed: README "GPUs").
AUTOTUNE_LEVEL=${AUTOTUNE_LEVEL:-minimal}
case "$AUTOTUNE_LEVEL" in
    minimal | balanced | extensive | full) ;;
    *) say "AUTOTUNE_LEVEL=$AUTOTUNE_LEVEL: use minimal, balanced, extensive or full"; exit 1 ;;
esac
unset CUBECL_AUTOTUNE_LEVEL # it would override the file
mkdir -p "$PACK/cubecl"
trap 'rm -f cubecl.toml' EXIT
cat >cubecl.toml <<TOML
[autotune]
level = "$AUTOTUNE_LEVEL"

[autotune.logger]
level = "minimal"
file = "$OUT/cubecl-autotune.log"

[compilation.logger]
level = "basic"
file = "$OUT/cubecl-compile.log"

[environment]
path = { directory = "$(cd "$PACK/cubecl" && pwd)" }
TOML
say "cubecl: autotune level $AUTOTUNE_LEVEL; cache $(ls "$PACK/cubecl" | tr '\n' ' ')"

step "${SELFTEST_LIMIT:-120}" "selftest on $DEVICE" "$DDPM" selftest --device "$DEVICE"

for spec in "small28 ${SMALL_BATCH:-256}" "cifar10 ${CIFAR_BATCH:-128}"; do
    set -- $spec
    step "${BENCH_LIMIT:-120}" "ddpm $1, batch $2, fp32, $DEVICE" \
        "$DDPM" --device "$DEVICE" bench --preset "$1" --batch-size "$2" --iters "$ITERS" --phases
    if [ "${BF16:-0}" = 1 ]; then
        step "${BF16_LIMIT:-90}" "ddpm $1, batch $2, --precision bf16, $DEVICE" \
            "$DDPM" --device "$DEVICE" --precision bf16 bench --preset "$1" --batch-size "$2" \
            --iters "$ITERS"
    fi
    for prec in fp32 bf16; do
        step 30 "PyTorch $1, batch $2, $prec, $DEVICE" \
            python3 bench/pytorch_unet.py --device "$DEVICE" --preset "$1" --batch-size "$2" \
            --iters "$ITERS" --precision "$prec"
    done
done

if [ -f "$PACK/inception-header.json" ]; then
    # Random weights with the real names and shapes (the speed does not depend on the values).
    python3 - "$PACK/inception-header.json" "$WORK/fid-random.safetensors" <<'PY' >>"$REPORT" 2>&1
import json, sys
import numpy as np
from safetensors.numpy import save_file
shapes = json.load(open(sys.argv[1]))
rng = np.random.default_rng(0)
out = {}
for name, shape in shapes.items():
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    v = rng.standard_normal(shape) / np.sqrt(fan_in)
    out[name] = ((1.0 + np.abs(v)) if name.endswith(".var") else v).astype(np.float32)
save_file(out, sys.argv[2])
PY
    step 40 "FID network (Inception), batch ${FID_BATCH:-64}, $DEVICE" \
        "$DDPM" --device "$DEVICE" bench --inception --inception-weights "$WORK/fid-random.safetensors" \
        --batch-size "${FID_BATCH:-64}" --iters "$ITERS"
else
    say "(FID network skipped: no $PACK/inception-header.json)"
fi

# Optional: with the time left of BUDGET seconds (counted from the script's start), train the
# paper's cifar10 preset on the image folder TRAIN_DATA on the GPU, then sample 64 images with
# DDIM-50, η = 1, into $OUT/gpu-samples.png (the log and the loss plot come back too).
if [ -n "${TRAIN_DATA:-}" ]; then
    left=$((${BUDGET:-560} - ($(date +%s) - START)))
    if [ "$left" -ge 100 ]; then
        minutes=$(python3 -c "print(round(($left - 70) / 60, 2))")
        step $((left - 40)) "train cifar10 on $TRAIN_DATA for $minutes min, $DEVICE" \
            "$DDPM" --device "$DEVICE" train --run "$WORK/run" --data "$TRAIN_DATA" --preset cifar10 \
            --batch-size "${TRAIN_BATCH:-128}" --minutes "$minutes" --preview-count 0 --lr "${TRAIN_LR:-5e-4}"
        step 35 "sample 64 with DDIM-50, $DEVICE" \
            "$DDPM" --device "$DEVICE" sample --run "$WORK/run" --n 64 --sampler ddim --steps 50 \
            --eta 1 --out "$OUT/gpu-samples.png"
        cp "$WORK/run/log.csv" "$OUT/gpu-train-log.csv" 2>/dev/null
        cp "$WORK/run/loss.png" "$OUT/gpu-train-loss.png" 2>/dev/null
    else
        say "(training skipped: $left s left of BUDGET=${BUDGET:-560})"
    fi
fi

# The logs, compressed (the cache went back after each step).
for f in "$OUT"/cubecl-autotune.log "$OUT"/cubecl-compile.log; do
    [ -f "$f" ] && say "$(basename "$f"): $(wc -l <"$f") lines" && xz -f "$f"
done

say ""
say "total: $(($(date +%s) - START)) s; report: $REPORT"
rm -rf "$WORK"
