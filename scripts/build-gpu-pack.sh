#!/usr/bin/env bash
# Builds everything scripts/gpu-check.sh needs on a GPU machine without Rust or network, into
# .gpu-pack/ (ignored by git), to be carried there (README.md, "GPUs"):
#   ddpm.xz                  the `--features cuda` binary, stripped and xz-packed (75 MB → 12 MB)
#   whl/                     the PyTorch peer's missing wheels (diffusers and importlib_metadata)
#   inception-header.json    names and shapes of the FID network's weights (the 87 MB file is
#                            too big to carry; gpu-check.sh times the network on random weights)
# Usage: scripts/build-gpu-pack.sh   (env: CARGO_TARGET_DIR, FID_WEIGHTS, PACK)
# The cuda build took 15 minutes on the 2 idle cores here (71 on shared ones) and needs
# neither a GPU nor the CUDA toolkit. Without nvcc, cudarc binds the newest CUDA API it knows
# (13.4); the GPU machine's driver 580 provides CUDA 13.0, so the pack binds 13.0 unless
# CUDARC_CUDA_VERSION says otherwise (cudarc's build script reads it).
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-.gpu-pack}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$PACK/whl"
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
cargo build --release --features cuda
strip -o "$PACK/ddpm" "$TARGET/release/ddpm"
xz -T0 -6 -f "$PACK/ddpm"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$PACK/whl" \
    diffusers==0.42.1 importlib_metadata==8.7.0
# The safetensors header: 8 bytes of little-endian length, then JSON with every tensor's shape.
weights=${FID_WEIGHTS:-}
for w in "${DDPM_INCEPTION:-}" "$HOME/.cache/ddpm/fid_inception_v3_tf2015_pool3.safetensors" \
         ../shared/data/fid-inception/fid_inception_v3_tf2015_pool3.safetensors; do
    [ -z "$weights" ] && [ -n "$w" ] && [ -f "$w" ] && weights=$w
done
if [ -n "$weights" ]; then
    python3 - "$weights" "$PACK/inception-header.json" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
header.pop("__metadata__", None)
json.dump({k: v["shape"] for k, v in header.items()}, open(sys.argv[2], "w"))
PY
else
    echo "note: no FID weights found (set FID_WEIGHTS): gpu-check.sh will skip the FID network"
fi
ls -la "$PACK" "$PACK/whl"
du -sh "$PACK"
