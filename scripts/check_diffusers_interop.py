"""diffusers' side of scripts/check-diffusers-interop.sh.

  python scripts/check_diffusers_interop.py WORK RUN

WORK/exported is a run exported by `ddpm export` (RUN is that run). This script
1. loads WORK/exported with `UNet2DModel.from_pretrained` and `DDPMScheduler.from_pretrained`,
   checks the scheduler's β against the run's config.json, and writes diffusers' ε on a seeded
   input to WORK/exported/reference_io.safetensors (x, integer t, eps);
2. saves the same model as PyTorch weights (`safe_serialization=False`) to WORK/exported-bin;
3. builds a different DDPM-configuration UNet2DModel with diffusers' own initialisation
   ("born" in diffusers) as a pipeline folder WORK/born/{unet,scheduler} (safetensors) and a
   flat WORK/born-bin (diffusion_pytorch_model.bin), each with its reference_io.safetensors,
   for `ddpm import` to read.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import save_file


def reference_io(model: UNet2DModel, dest: Path, num_timesteps: int, seed: int) -> float:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, c.in_channels, c.sample_size, c.sample_size, generator=g)
    t = torch.tensor([0, 10, num_timesteps // 2, num_timesteps - 1])
    io = {"x": x.contiguous(), "t": t.to(torch.float32)}
    y = None
    if c.num_class_embeds:
        y = torch.tensor([0, 1, 2, c.num_class_embeds - 1])
        io["y"] = y.to(torch.float32)
    with torch.no_grad():
        eps = model(x, t, class_labels=y).sample
    io["eps"] = eps.contiguous()
    save_file(io, str(dest / "reference_io.safetensors"))
    return float(eps.abs().max())


def main() -> None:
    work, run = Path(sys.argv[1]), Path(sys.argv[2])
    exported = work / "exported"
    model = UNet2DModel.from_pretrained(exported).eval()
    sched = DDPMScheduler.from_pretrained(exported)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"diffusers loaded {exported}: {n_params} parameters, scheduler {sched.config.beta_schedule} "
          f"T = {sched.config.num_train_timesteps}, variance {sched.config.variance_type}")

    # β of the run (ddpm's config.json) against DDPMScheduler's.
    diffusion = json.loads((run / "config.json").read_text())["diffusion"]
    T = diffusion["num_timesteps"]
    assert sched.config.num_train_timesteps == T
    schedule = diffusion["schedule"]
    if "Linear" in schedule:
        lin = schedule["Linear"]
        want = torch.linspace(lin["beta_start"], lin["beta_end"], T, dtype=torch.float64)
        err = float((sched.betas.double() - want).abs().max())
        print(f"scheduler β vs the run's linear schedule: max |Δβ| = {err:.2e}")
        assert err < 1e-7, err

    scale = reference_io(model, exported, T, seed=0)
    print(f"wrote {exported / 'reference_io.safetensors'} (max |eps| {scale:.3f})")
    exported_bin = work / "exported-bin"
    model.save_pretrained(exported_bin, safe_serialization=False)
    shutil.copy(exported / "reference_io.safetensors", exported_bin)
    print(f"wrote {exported_bin} (diffusion_pytorch_model.bin)")

    # A model born in diffusers: 3 levels, attention in the middle one, 1 channel, cosine β,
    # 5 class-embedding rows, a learned variance (2 output channels), v-prediction.
    torch.manual_seed(1)
    born = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=2,
        num_class_embeds=5,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        attention_head_dim=None,
    ).eval()
    with torch.no_grad():
        for p in born.parameters():  # norms, biases and the zero-initialised layers matter too
            p.add_(0.02 * torch.randn_like(p))
    born_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                               variance_type="learned_range", prediction_type="v_prediction")
    pipe = work / "born"
    born.save_pretrained(pipe / "unet")
    born_sched.save_pretrained(pipe / "scheduler")
    scale = reference_io(born, pipe / "unet", 1000, seed=2)
    born.save_pretrained(work / "born-bin", safe_serialization=False)
    shutil.copy(pipe / "unet" / "reference_io.safetensors", work / "born-bin")
    born_params = sum(p.numel() for p in born.parameters())
    print(f"wrote {pipe} (unet/ + scheduler/) and {work / 'born-bin'}: {born_params} parameters, "
          f"max |eps| {scale:.3f}")


if __name__ == "__main__":
    main()
