//! Pictures: PNG grids of samples and animated GIFs of denoising chains.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Tensor;
use image::{Delay, Frame, RgbImage, RgbaImage, codecs::gif::GifEncoder};

use crate::data::from_unit;

/// Model-space images ([B,C,H,W] in [−1, 1]) to bytes, `round((x+1)·127.5)` clamped.
pub fn tensor_to_u8(x: Tensor<4>) -> (Vec<u8>, [usize; 4]) {
    let dims = x.dims();
    let v: Vec<f32> = x.into_data().convert::<f32>().try_into_vec().expect("f32");
    (v.into_iter().map(from_unit).collect(), dims)
}

/// Tiles N CHW byte images into a grid with `ncol` columns and a 2-pixel border.
pub fn grid(pixels: &[u8], dims: [usize; 4], ncol: usize) -> RgbImage {
    let [n, c, h, w] = dims;
    let ncol = ncol.clamp(1, n.max(1));
    let nrow = n.div_ceil(ncol);
    let pad = 2;
    let mut img = RgbImage::from_pixel(
        (ncol * (w + pad) + pad) as u32,
        (nrow * (h + pad) + pad) as u32,
        image::Rgb([255, 255, 255]),
    );
    for i in 0..n {
        let (gx, gy) = (pad + (i % ncol) * (w + pad), pad + (i / ncol) * (h + pad));
        let base = i * c * h * w;
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| pixels[base + (ch.min(c - 1) * h + y) * w + x];
                img.put_pixel(
                    (gx + x) as u32,
                    (gy + y) as u32,
                    image::Rgb([at(0), at(1), at(2)]),
                );
            }
        }
    }
    img
}

/// Scales an image up by an integer factor (nearest), so 28×28 samples are visible.
pub fn upscale(img: &RgbImage, factor: u32) -> RgbImage {
    if factor <= 1 {
        return img.clone();
    }
    image::imageops::resize(
        img,
        img.width() * factor,
        img.height() * factor,
        image::imageops::FilterType::Nearest,
    )
}

/// A sensible integer zoom for small images (about 512 px wide).
pub fn auto_zoom(img: &RgbImage) -> u32 {
    (512 / img.width().max(1)).clamp(1, 4)
}

/// Saves a grid of model-space images as PNG.
pub fn save_grid(x: Tensor<4>, ncol: usize, path: &Path) -> Result<()> {
    let (px, dims) = tensor_to_u8(x);
    let g = grid(&px, dims, ncol);
    let g = upscale(&g, auto_zoom(&g));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    g.save(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Saves frames as an animated GIF (each frame `delay_ms`, the last held 2 s), looping.
pub fn save_gif(frames: &[RgbImage], delay_ms: u32, path: &Path) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    enc.set_repeat(image::codecs::gif::Repeat::Infinite)?;
    for (i, f) in frames.iter().enumerate() {
        let delay = if i + 1 == frames.len() {
            2000
        } else {
            delay_ms
        };
        let rgba: RgbaImage = image::DynamicImage::ImageRgb8(f.clone()).to_rgba8();
        enc.encode_frame(Frame::from_parts(
            rgba,
            0,
            0,
            Delay::from_numer_denom_ms(delay, 1),
        ))
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
