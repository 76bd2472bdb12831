#!/usr/bin/env bash
# ddpm ↔ diffusers, checked against diffusers itself (README "diffusers interoperability"):
#   1. `ddpm export` a run (RUN, or a tiny model trained here for 30 steps); diffusers'
#      UNet2DModel.from_pretrained / DDPMScheduler.from_pretrained load it; diffusers' ε on a
#      seeded input is compared with ddpm's ε of the run (EMA weights) and of the exported folder,
#      also re-saved by diffusers as PyTorch `.bin`;
#   2. a UNet2DModel built and initialised by diffusers (pipeline layout unet/ + scheduler/, and
#      as `.bin`) goes through `ddpm import`, and ddpm's ε of the imported run is compared with
#      diffusers'.
# Needs Python with torch, diffusers and safetensors: PYTHON=/path/to/venv/bin/python
# (e.g. `python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch diffusers safetensors`).
# Usage: scripts/check-diffusers-interop.sh [RUN]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release -q
ddpm="${CARGO_TARGET_DIR:-target}/release/ddpm"
run="${1:-}"
if [ -z "$run" ]; then
    run="$work/run"
    "$ddpm" train --run "$run" --preset tiny --steps 30 --batch-size 8 --lr 2e-3 --warmup 1 --ema-decay 0.5 \
        --sample-every 0 --quiet
fi
"$ddpm" export --run "$run" --diffusers "$work/exported"
"$PYTHON" scripts/check_diffusers_interop.py "$work" "$run"
"$ddpm" import --diffusers "$work/born" --run "$work/born-run"
"$ddpm" import --diffusers "$work/born-bin" --run "$work/born-bin-run"
check() {
    local out
    if ! out="$(DDPM_INTEROP_DIR="$1" DDPM_INTEROP_RUN="$2" cargo test --release -q --test interop \
        diffusers_reference_io_when_given -- --nocapture 2>&1)"; then
        echo "$out"
        echo "FAILED: $1 against $2"
        exit 1
    fi
    echo "$out" | grep -E "max \|"
}
check "$work/exported" "$run"
check "$work/exported-bin" "$run"
check "$work/born" "$work/born-run"
check "$work/born-bin" "$work/born-bin-run"
echo "ddpm and diffusers agree (bound 1e-4 on ε)"
