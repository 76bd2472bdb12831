//! Folders of PNG/JPEG images. Sub-folders are classes (sorted by name); images directly in
//! the folder are unlabelled. Grey, grey+alpha, RGB, RGBA and palette images are accepted; alpha
//! is composited on white. A set is grey when every image is grey, RGB otherwise. Non-square
//! images are centre-cropped; with a target size every image is resized to it, without one all
//! images must share one size.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, RgbImage, imageops::FilterType};

use super::{DataError, ImageSet};

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// A decoded image: RGB after compositing alpha on white, and whether it was grey.
fn load_image(path: &Path) -> Result<(RgbImage, bool), DataError> {
    let img = ImageReader::open(path)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .decode()
        .map_err(|e| DataError::corrupt(path, format!("cannot decode image: {e}")))?;
    let grey = matches!(
        img,
        DynamicImage::ImageLuma8(_)
            | DynamicImage::ImageLumaA8(_)
            | DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
    );
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut rgb = RgbImage::new(w, h);
    for (x, y, p) in rgba.enumerate_pixels() {
        let a = p[3] as f32 / 255.0;
        let c = |v: u8| (v as f32 * a + 255.0 * (1.0 - a)).round() as u8;
        rgb.put_pixel(x, y, image::Rgb([c(p[0]), c(p[1]), c(p[2])]));
    }
    Ok((rgb, grey))
}

fn centre_crop_resize(img: RgbImage, size: Option<usize>) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h);
    let img = if w != h {
        DynamicImage::ImageRgb8(img)
            .crop_imm((w - side) / 2, (h - side) / 2, side, side)
            .to_rgb8()
    } else {
        img
    };
    match size {
        Some(s) if s as u32 != side => {
            image::imageops::resize(&img, s as u32, s as u32, FilterType::Triangle)
        }
        _ => img,
    }
}

/// One image file as u8 values in CHW order with `channels` channels (1 or 3), centre-cropped
/// and resized to `size`×`size`: grey is repeated to RGB, RGB becomes grey by ITU-R BT.601 luma.
/// For single images given on the command line (SDEdit guides, inpainting, DDIM inversion).
pub fn load_one(path: &Path, size: usize, channels: usize) -> Result<Vec<u8>, DataError> {
    if !path.is_file() {
        return Err(DataError::corrupt(path, "no such image file"));
    }
    let (img, _) = load_image(path)?;
    let img = centre_crop_resize(img, Some(size));
    let mut out = Vec::with_capacity(channels * size * size);
    match channels {
        1 => out.extend(img.pixels().map(|p| {
            (0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).round() as u8
        })),
        3 => push_chw(&img, 3, &mut out),
        c => {
            return Err(DataError::corrupt(
                path,
                format!("{c} channels requested; images have 1 or 3"),
            ));
        }
    }
    Ok(out)
}

/// Loads every image under `dir`.
pub fn open(dir: &Path, size: Option<usize>) -> anyhow::Result<ImageSet> {
    let entries = sorted_entries(dir)?;
    let classes: Vec<PathBuf> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
    let mut files: Vec<(PathBuf, Option<u32>)> = entries
        .iter()
        .filter(|p| is_image(p))
        .map(|p| (p.clone(), None))
        .collect();
    let mut class_names = Vec::new();
    if files.is_empty() {
        for c in &classes {
            let imgs: Vec<PathBuf> = sorted_entries(c)?
                .into_iter()
                .filter(|p| is_image(p))
                .collect();
            if imgs.is_empty() {
                continue;
            }
            class_names.push(c.file_name().unwrap().to_string_lossy().to_string());
            let label = (class_names.len() - 1) as u32;
            files.extend(imgs.into_iter().map(|p| (p, Some(label))));
        }
    }
    if files.is_empty() {
        anyhow::bail!(
            "{}: no PNG or JPEG images (directly or in class sub-folders)",
            dir.display()
        );
    }
    let mut images = Vec::with_capacity(files.len());
    let mut all_grey = true;
    let mut side = None;
    for (p, _) in &files {
        let (img, grey) = load_image(p)?;
        all_grey &= grey;
        let img = centre_crop_resize(img, size);
        let s = img.width() as usize;
        match side {
            None => side = Some(s),
            Some(s0) if s0 != s => anyhow::bail!(
                "{}: image is {s}×{s} (after centre crop) but earlier images are {s0}×{s0}; pass --image-size to resize all",
                p.display()
            ),
            _ => {}
        }
        images.push(img);
    }
    let side = side.unwrap();
    let channels = if all_grey { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(images.len() * channels * side * side);
    for img in &images {
        push_chw(img, channels, &mut pixels);
    }
    let labelled = files.iter().all(|(_, l)| l.is_some());
    Ok(ImageSet {
        name: dir.display().to_string(),
        channels,
        height: side,
        width: side,
        pixels,
        labels: labelled.then(|| files.iter().map(|(_, l)| l.unwrap()).collect()),
        class_names,
    })
}

fn push_chw(img: &RgbImage, channels: usize, out: &mut Vec<u8>) {
    if channels == 1 {
        out.extend(img.pixels().map(|p| p[0]));
    } else {
        for c in 0..3 {
            out.extend(img.pixels().map(|p| p[c]));
        }
    }
}

/// Resizes every image of a set to `size`×`size` (centre-cropping non-square ones).
pub fn resize_set(set: ImageSet, size: usize) -> anyhow::Result<ImageSet> {
    let (c, h, w) = (set.channels, set.height, set.width);
    let mut pixels = Vec::with_capacity(set.len() * c * size * size);
    for i in 0..set.len() {
        let px = set.image(i);
        let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let at = |ch: usize| px[(ch.min(c - 1) * h + y as usize) * w + x as usize];
            image::Rgb([at(0), at(1), at(2)])
        });
        push_chw(&centre_crop_resize(img, Some(size)), c, &mut pixels);
    }
    Ok(ImageSet {
        height: size,
        width: size,
        pixels,
        ..set
    })
}
