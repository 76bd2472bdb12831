"""Checks a `ddpm sample --npz FILE [--out-dir DIR]` output with NumPy (and Pillow for DIR).

  python scripts/check_npz.py FILE.npz [PNG_DIR]

np.load must give a uint8 N×H×W×C array under `arr_0` (guided-diffusion's evaluator reads
`np.load(path)["arr_0"]`); with PNG_DIR, image i must equal PNG_DIR/{i:06}.png.
"""

import sys
from pathlib import Path

import numpy as np

with np.load(sys.argv[1]) as f:
    keys = list(f.keys())
    arr = f["arr_0"]
assert keys == ["arr_0"], keys
assert arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[3] in (1, 3), (arr.dtype, arr.shape)
print(f"{sys.argv[1]}: arr_0 {arr.dtype} {arr.shape}, values {arr.min()}..{arr.max()}, mean {arr.mean():.2f}")
if len(sys.argv) > 2:
    from PIL import Image

    for i in range(arr.shape[0]):
        img = np.asarray(Image.open(Path(sys.argv[2]) / f"{i:06}.png"))
        img = img.reshape(arr.shape[1:])
        assert (img == arr[i]).all(), f"image {i} differs"
    print(f"all {arr.shape[0]} images equal the PNGs in {sys.argv[2]}")
