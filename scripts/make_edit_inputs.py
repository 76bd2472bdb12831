#!/usr/bin/env python3
"""Inputs of the README's editing pictures, from the installed Fashion-MNIST test set (needs
numpy and Pillow): test images 0 (ankle boot) and 6 (coat), "stroke paintings" of test images
0-2 for SDEdit (Meng et al. 2022: the 7x7 box-filtered image quantised to four grey levels,
then enlarged), and a mask that keeps the left half (white = keep).

    python3 scripts/make_edit_inputs.py OUT_DIR [IDX_DIR]
"""
import gzip
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
src = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
os.makedirs(out, exist_ok=True)
raw = gzip.open(os.path.join(src, "t10k-images-idx3-ubyte.gz")).read()
assert int.from_bytes(raw[:4], "big") == 2051, "not an IDX images file"
imgs = np.frombuffer(raw[16:], np.uint8).reshape(-1, 28, 28)
for i in (0, 6):
    Image.fromarray(imgs[i]).save(os.path.join(out, f"test{i:02d}.png"))
for i in (0, 1, 2):
    small = np.asarray(Image.fromarray(imgs[i]).resize((7, 7), Image.BOX))
    q = (small // 64 * 64 + 32).astype(np.uint8)
    Image.fromarray(q).resize((28, 28), Image.NEAREST).save(os.path.join(out, f"strokes{i:02d}.png"))
mask = np.zeros((28, 28), np.uint8)
mask[:, :14] = 255
Image.fromarray(mask).save(os.path.join(out, "mask-left.png"))
