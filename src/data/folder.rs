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

/// Why an entry under an image folder was not loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// A file without a .png/.jpg/.jpeg extension (or a hidden file such as `.DS_Store`).
    NotAnImage,
    /// An entry that could not be listed or examined (the I/O error).
    Unreadable(String),
    /// A class sub-folder without images.
    EmptyClass,
    /// A sub-folder that is not read: images directly in the folder make the set unlabelled,
    /// and class folders are one level deep.
    IgnoredFolder,
}

impl SkipReason {
    fn label(&self) -> &'static str {
        match self {
            SkipReason::NotAnImage => "not PNG/JPEG",
            SkipReason::Unreadable(_) => "unreadable",
            SkipReason::EmptyClass => "empty class folder",
            SkipReason::IgnoredFolder => "folder not read",
        }
    }
}

/// An entry of an image folder that was not loaded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The file or folder.
    pub path: PathBuf,
    /// Why.
    pub reason: SkipReason,
}

/// One line on what was skipped, e.g. `skipped 3 entries: 2 not PNG/JPEG (a.txt, b.gif), 1
/// unreadable (c.png: permission denied)`; None when nothing was.
pub fn skip_summary(skipped: &[Skipped]) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    for reason in [
        SkipReason::NotAnImage,
        SkipReason::Unreadable(String::new()),
        SkipReason::EmptyClass,
        SkipReason::IgnoredFolder,
    ] {
        let these: Vec<&Skipped> = skipped
            .iter()
            .filter(|k| std::mem::discriminant(&k.reason) == std::mem::discriminant(&reason))
            .collect();
        if these.is_empty() {
            continue;
        }
        let names: Vec<String> = these
            .iter()
            .take(3)
            .map(|k| {
                let n = k.path.file_name().map_or_else(
                    || k.path.display().to_string(),
                    |f| f.to_string_lossy().to_string(),
                );
                match &k.reason {
                    SkipReason::Unreadable(e) => format!("{n}: {e}"),
                    _ => n,
                }
            })
            .collect();
        let more = if these.len() > 3 { ", …" } else { "" };
        parts.push(format!(
            "{} {} ({}{more})",
            these.len(),
            reason.label(),
            names.join(", ")
        ));
    }
    Some(format!(
        "skipped {} entr{}: {}",
        skipped.len(),
        if skipped.len() == 1 { "y" } else { "ies" },
        parts.join(", ")
    ))
}

/// The error of a folder without any image to load (with what was skipped).
#[derive(Debug)]
pub struct NoImages {
    /// The folder.
    pub dir: PathBuf,
    /// What was skipped.
    pub skipped: Vec<Skipped>,
}

impl std::fmt::Display for NoImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: no PNG or JPEG images (directly or in class sub-folders)",
            self.dir.display()
        )?;
        if let Some(s) = skip_summary(&self.skipped) {
            write!(f, "; {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoImages {}

/// Files and sub-folders of `dir`, sorted; entries that cannot be listed go to `skipped`.
fn sorted_entries(
    dir: &Path,
    skipped: &mut Vec<Skipped>,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for e in rd {
        let p = match e {
            Ok(e) => e.path(),
            Err(err) => {
                skipped.push(Skipped {
                    path: dir.to_path_buf(),
                    reason: SkipReason::Unreadable(err.to_string()),
                });
                continue;
            }
        };
        // Follows symbolic links: a dangling one is unreadable.
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => dirs.push(p),
            Ok(_) => files.push(p),
            Err(err) => skipped.push(Skipped {
                path: p,
                reason: SkipReason::Unreadable(err.to_string()),
            }),
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
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

/// Loads every image under `dir`; prints one line to stderr when entries were skipped
/// (see [`open_report`]).
pub fn open(dir: &Path, size: Option<usize>) -> anyhow::Result<ImageSet> {
    let (set, skipped) = open_report(dir, size)?;
    if let Some(s) = skip_summary(&skipped) {
        eprintln!("note: {}: {s}", dir.display());
    }
    Ok(set)
}

/// Loads every image under `dir` and says which entries were skipped and why: files that are
/// not PNG/JPEG, entries that cannot be listed, class folders without images, folders not read.
/// An image file that cannot be decoded is an error naming it, not a skip.
pub fn open_report(dir: &Path, size: Option<usize>) -> anyhow::Result<(ImageSet, Vec<Skipped>)> {
    let mut skipped = Vec::new();
    let (top_files, classes) = sorted_entries(dir, &mut skipped)?;
    let not_images = |files: Vec<PathBuf>, skipped: &mut Vec<Skipped>| -> Vec<PathBuf> {
        let (imgs, others): (Vec<PathBuf>, Vec<PathBuf>) =
            files.into_iter().partition(|p| is_image(p));
        skipped.extend(others.into_iter().map(|path| Skipped {
            path,
            reason: SkipReason::NotAnImage,
        }));
        imgs
    };
    let mut files: Vec<(PathBuf, Option<u32>)> = not_images(top_files, &mut skipped)
        .into_iter()
        .map(|p| (p, None))
        .collect();
    let mut class_names = Vec::new();
    if files.is_empty() {
        for c in &classes {
            let (class_files, sub) = sorted_entries(c, &mut skipped)?;
            skipped.extend(sub.into_iter().map(|path| Skipped {
                path,
                reason: SkipReason::IgnoredFolder,
            }));
            let imgs = not_images(class_files, &mut skipped);
            if imgs.is_empty() {
                skipped.push(Skipped {
                    path: c.clone(),
                    reason: SkipReason::EmptyClass,
                });
                continue;
            }
            class_names.push(c.file_name().unwrap().to_string_lossy().to_string());
            let label = (class_names.len() - 1) as u32;
            files.extend(imgs.into_iter().map(|p| (p, Some(label))));
        }
    } else {
        skipped.extend(classes.into_iter().map(|path| Skipped {
            path,
            reason: SkipReason::IgnoredFolder,
        }));
    }
    if files.is_empty() {
        return Err(NoImages {
            dir: dir.to_path_buf(),
            skipped,
        }
        .into());
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
    Ok((
        ImageSet {
            name: dir.display().to_string(),
            channels,
            height: side,
            width: side,
            pixels,
            labels: labelled.then(|| files.iter().map(|(_, l)| l.unwrap()).collect()),
            class_names,
        },
        skipped,
    ))
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
