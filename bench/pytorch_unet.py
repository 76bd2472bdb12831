#!/usr/bin/env python3
"""The peer: diffusers' UNet2DModel in the DDPM configuration, identical to a ddpm preset,
timed the way `ddpm bench` times ddpm (same batch, same thread count, same step contents).

    pip install torch diffusers==0.42.1
    python3 bench/pytorch_unet.py --preset small28 --batch-size 64 --threads 2
    python3 bench/pytorch_unet.py --device cuda --preset cifar10 --batch-size 128 --precision bf16

Training step = forward + L_simple + backward + Adam (grad-norm clip 1) + EMA update.
Sampling = one forward pass without autograd (one denoising step).
On --device cuda every timing ends with torch.cuda.synchronize(); --precision bf16 runs the
forward pass (and the loss) under torch.autocast(dtype=torch.bfloat16) with f32 weights, Adam
state and EMA (PyTorch's standard mixed precision; on the CPU, oneDNN's bf16 kernels where the
CPU has AVX512_BF16); fp32 leaves TF32 off, as PyTorch's default.
"""
import argparse, resource, time

import torch
from diffusers import UNet2DModel

PRESETS = {
    # name: (image_size, channels, block_out_channels, attention level flags, layers, groups, dropout)
    "small28": (28, 1, [32, 64, 64], [False, False, True], 2, 8, 0.0),
    "cifar10": (32, 3, [128, 256, 256, 256], [False, True, False, False], 2, 32, 0.1),
    "tiny": (28, 1, [16, 32], [False, True], 1, 4, 0.0),
}


def build(preset):
    size, ch, boc, attn, layers, groups, dropout = PRESETS[preset]
    return UNet2DModel(
        sample_size=size, in_channels=ch, out_channels=ch, block_out_channels=boc,
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        layers_per_block=layers, norm_num_groups=groups, norm_eps=1e-6, dropout=dropout,
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
        time_embedding_type="positional", act_fn="silu", attention_head_dim=None,
    ), (ch, size)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small28")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: autocast the forward pass to bfloat16 (weights stay f32)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")

    model, (ch, size) = build(a.preset)
    model = model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    b = a.batch_size
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0).float().to(dev)

    def train_step():
        x0 = torch.randn(b, ch, size, size, device=dev).clamp(-1, 1)
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,), device=dev)
        s = abar[t].view(-1, 1, 1, 1)
        xt = s.sqrt() * x0 + (1 - s).sqrt() * eps
        with autocast():
            loss = ((model(xt, t).sample.float() - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - 0.9999)

    model.train()
    # Warm-up: one step on the CPU; three on a GPU (cuDNN picks its algorithms, caches fill).
    for _ in range(3 if cuda else 1):
        train_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        train_step()
    sync()
    train_ips = a.iters * b / (time.perf_counter() - t0)

    model.eval()
    x = torch.randn(b, ch, size, size, device=dev)
    t = torch.full((b,), 500, device=dev)
    with torch.no_grad(), autocast():
        for _ in range(3 if cuda else 1):
            model(x, t)
        sync()
        t0 = time.perf_counter()
        for _ in range(a.iters):
            model(x, t)
        sync()
        fwd_ips = a.iters * b / (time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    where = torch.cuda.get_device_name(dev) if cuda else f"{a.threads} threads"
    print(f"pytorch {torch.__version__}: preset {a.preset} ({n_params} params), batch {b}, {where}, {a.precision}")
    print(f"training:  {train_ips:8.1f} images/s")
    print(f"sampling:  {fwd_ips:8.1f} images/s per denoising step")
    print(f"peak RSS:  {peak_mb:8.0f} MiB")
    if cuda:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**20:8.0f} MiB")


if __name__ == "__main__":
    main()
