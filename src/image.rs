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

/// A minimal line plot (no text): `values` against their index, y on a log scale when
/// `log_y`, light grid lines at every decade (log) or at quarters (linear).
pub fn line_plot(values: &[f64], log_y: bool, width: u32, height: u32, path: &Path) -> Result<()> {
    let mut img = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let (ml, mr, mt, mb) = (40i64, 10i64, 10i64, 30i64);
    let pw = width as i64 - ml - mr;
    let ph = height as i64 - mt - mb;
    let f = |v: f64| if log_y { v.max(1e-300).log10() } else { v };
    let ys: Vec<f64> = values
        .iter()
        .map(|&v| f(v))
        .filter(|v| v.is_finite())
        .collect();
    if ys.is_empty() || pw <= 0 || ph <= 0 {
        return img
            .save(path)
            .with_context(|| format!("writing {}", path.display()));
    }
    let (mut lo, mut hi) = ys
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
    if log_y {
        lo = lo.floor();
        hi = hi.ceil();
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let to_px = |i: usize, y: f64| -> (i64, i64) {
        let x = ml + (i as f64 / (values.len().max(2) - 1) as f64 * pw as f64) as i64;
        let yy = mt + ph - ((y - lo) / (hi - lo) * ph as f64) as i64;
        (x, yy)
    };
    let grey = image::Rgb([220, 220, 220]);
    let put = |img: &mut RgbImage, x: i64, y: i64, c: image::Rgb<u8>| {
        if x >= 0 && y >= 0 && (x as u32) < width && (y as u32) < height {
            img.put_pixel(x as u32, y as u32, c);
        }
    };
    let ticks: Vec<f64> = if log_y {
        (lo as i64..=hi as i64).map(|d| d as f64).collect()
    } else {
        (0..=4).map(|k| lo + (hi - lo) * k as f64 / 4.0).collect()
    };
    for t in ticks {
        let (_, y) = to_px(0, t);
        for x in ml..ml + pw {
            put(&mut img, x, y, grey);
        }
    }
    for y in mt..=mt + ph {
        put(&mut img, ml, y, image::Rgb([0, 0, 0]));
    }
    for x in ml..=ml + pw {
        put(&mut img, x, mt + ph, image::Rgb([0, 0, 0]));
    }
    let blue = image::Rgb([30, 90, 200]);
    let mut prev: Option<(i64, i64)> = None;
    for (i, &v) in values.iter().enumerate() {
        let y = f(v);
        if !y.is_finite() {
            prev = None;
            continue;
        }
        let p = to_px(i, y);
        if let Some(q) = prev {
            let n = (p.0 - q.0).abs().max((p.1 - q.1).abs()).max(1);
            for k in 0..=n {
                let x = q.0 + (p.0 - q.0) * k / n;
                let yy = q.1 + (p.1 - q.1) * k / n;
                put(&mut img, x, yy, blue);
                put(&mut img, x, yy + 1, blue);
            }
        }
        prev = Some(p);
    }
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}
