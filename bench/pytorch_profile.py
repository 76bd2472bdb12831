#!/usr/bin/env python3
"""Per-operator profile of the PyTorch peer's training step (forward + backward + Adam),
for comparison with BENCHMARKS.md's breakdown of ddpm.

    python3 bench/pytorch_profile.py --preset small28 --batch-size 64 --threads 2
"""
import argparse
import torch
from torch.profiler import profile, ProfilerActivity
from pytorch_unet import build

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="small28")
ap.add_argument("--batch-size", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
model, (ch, size) = build(a.preset)
opt = torch.optim.Adam(model.parameters(), lr=2e-4)
x = torch.randn(a.batch_size, ch, size, size)
t = torch.randint(0, 1000, (a.batch_size,))

def step():
    loss = ((model(x, t).sample - x) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
