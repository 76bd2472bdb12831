#!/usr/bin/env python3
"""Lays out images in rows for the README's editing pictures (needs Pillow).

    python3 scripts/compose_rows.py OUT.png [--scale 3] ROW [ROW ...]

Each ROW is a comma-separated list of image paths (a folder stands for all its PNGs in
order); a path may be prefixed `masked:MASK:` to show the image with the mask's black
(generated) pixels greyed out. Images are scaled by --scale with nearest-neighbour, separated
by 2-pixel gaps, and a wider gap follows the first image of each row (the input).
"""
import argparse
import os

from PIL import Image


def load(spec):
    if spec.startswith("masked:"):
        _, mask, path = spec.split(":", 2)
        img = Image.open(path).convert("L")
        m = Image.open(mask).convert("L").resize(img.size)
        grey = Image.new("L", img.size, 128)
        return [Image.composite(img, grey, m.point(lambda v: 255 if v >= 128 else 0))]
    if os.path.isdir(spec):
        return [Image.open(os.path.join(spec, f)).convert("L")
                for f in sorted(os.listdir(spec)) if f.endswith(".png")]
    return [Image.open(spec).convert("L")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--scale", type=int, default=3)
    a = ap.parse_args()
    rows = [[im for spec in row.split(",") for im in load(spec)] for row in a.rows]
    size = rows[0][0].size[0] * a.scale
    gap, wide = 2, 10
    width = max(len(r) * (size + gap) + wide for r in rows)
    height = len(rows) * (size + gap)
    canvas = Image.new("L", (width, height), 255)
    for i, row in enumerate(rows):
        x = 0
        for j, im in enumerate(row):
            canvas.paste(im.resize((size, size), Image.NEAREST), (x, i * (size + gap)))
            x += size + (wide if j == 0 else gap)
    canvas.save(a.out)


if __name__ == "__main__":
    main()
