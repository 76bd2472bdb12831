//! Data parsers against known bytes, and their errors on bad files.

use std::io::Write;
use std::path::Path;

use ddpm::data::{self, Split, cifar, folder, idx};

mod common;

fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_reads_known_bytes_raw_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let px: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 10).collect();
    write(
        &dir.path().join("train-images-idx3-ubyte"),
        &idx_bytes(&[2, 3, 4], &px),
    );
    write(
        &dir.path().join("train-labels-idx1-ubyte.gz"),
        &gz(&idx_bytes(&[2], &[7, 3])),
    );
    let set = idx::open_mnist_dir(dir.path(), Split::Train, "mnist").unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (2, 1, 3, 4)
    );
    assert_eq!(set.image(1), &px[12..]);
    assert_eq!(set.labels, Some(vec![7, 3]));
}

#[test]
fn idx_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x-idx3-ubyte");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (idx_bytes(&[2, 3, 4], &[0; 23]), "truncated"),
        (idx_bytes(&[2, 3, 4], &[0; 25]), "trailing"),
        (vec![1, 2, 3, 4, 0, 0, 0, 0], "wrong magic"),
        (vec![0, 0, 0x0d, 3], "not unsigned byte"),
        (vec![0, 0], "truncated"),
        (idx_bytes(&[2, 3], &[0; 6]), "expected N×H×W"),
    ];
    for (bytes, needle) in cases {
        write(&p, &bytes);
        let err = idx::read_images_labels(&p, None, "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x-idx3-ubyte") && err.contains(needle),
            "{err:?} lacks {needle:?}"
        );
    }
    // A corrupt gzip stream.
    let mut g = gz(&idx_bytes(&[1, 2, 2], &[0; 4]));
    let n = g.len();
    g.truncate(n - 6);
    write(&p, &g);
    let err = idx::read_images_labels(&p, None, "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("gzip"), "{err}");
    // Labels: wrong count, out of range.
    let img = dir.path().join("i");
    write(&img, &idx_bytes(&[2, 1, 1], &[0, 0]));
    let lab = dir.path().join("l");
    write(&lab, &idx_bytes(&[3], &[0, 1, 2]));
    let err = idx::read_images_labels(&img, Some(&lab), "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 labels for 2 images"), "{err}");
    write(&lab, &idx_bytes(&[2], &[0, 12]));
    let err = idx::read_images_labels(&img, Some(&lab), "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 12 at index 1"), "{err}");
}

#[test]
fn cifar_batches_parse_and_reject_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Vec::new();
    for (label, fill) in [(3u8, 10u8), (9, 200)] {
        rec.push(label);
        rec.extend((0..3072).map(|i| fill.wrapping_add((i / 1024) as u8)));
    }
    write(&dir.path().join("test_batch.bin"), &rec);
    let set = data::open(dir.path().to_str().unwrap(), Split::Test, None).unwrap();
    assert_eq!((set.len(), set.channels, set.height), (2, 3, 32));
    assert_eq!(set.labels, Some(vec![3, 9]));
    // R plane then G then B.
    assert_eq!(
        (set.image(1)[0], set.image(1)[1024], set.image(1)[2048]),
        (200, 201, 202)
    );
    let p = dir.path().join("test_batch.bin");
    write(&p, &rec[..5000]);
    let err = cifar::open_dir(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test_batch.bin") && err.contains("truncated"),
        "{err}"
    );
    rec[0] = 10;
    write(&p, &rec);
    let err = cifar::open_dir(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 10"), "{err}");
}

#[test]
fn image_folders_with_classes_alpha_and_resizing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    // A transparent RGBA pixel composites to white; an opaque one keeps its colour.
    let mut rgba = image::RgbaImage::new(8, 8);
    rgba.put_pixel(0, 0, image::Rgba([255, 0, 0, 255]));
    rgba.save(dir.path().join("a/1.png")).unwrap();
    image::GrayImage::from_pixel(8, 8, image::Luma([40]))
        .save(dir.path().join("b/2.png"))
        .unwrap();
    let set = folder::open(dir.path(), None).unwrap();
    assert_eq!((set.len(), set.channels, set.height), (2, 3, 8));
    assert_eq!(set.labels, Some(vec![0, 1]));
    assert_eq!(set.class_names, vec!["a", "b"]);
    let img = set.image(0);
    assert_eq!((img[0], img[64], img[128]), (255, 0, 0));
    assert_eq!((img[1], img[65], img[129]), (255, 255, 255));
    assert_eq!(set.image(1)[0..3], [40, 40, 40]);
    // Grey-only folders load with one channel; resizing.
    let g = tempfile::tempdir().unwrap();
    image::GrayImage::from_pixel(6, 4, image::Luma([90]))
        .save(g.path().join("x.png"))
        .unwrap();
    let set = folder::open(g.path(), Some(3)).unwrap();
    assert_eq!((set.channels, set.height, set.width), (1, 3, 3));
    assert!(set.image(0).iter().all(|&v| v == 90));
    // Mixed sizes without a target size: a clear error naming the file.
    image::GrayImage::new(5, 5)
        .save(g.path().join("y.png"))
        .unwrap();
    let err = folder::open(g.path(), None).unwrap_err().to_string();
    assert!(
        err.contains("y.png") && err.contains("--image-size"),
        "{err}"
    );
    // A corrupt PNG.
    write(&g.path().join("z.png"), b"\x89PNG\r\n\x1a\nnot really");
    let err = folder::open(g.path(), Some(4)).unwrap_err().to_string();
    assert!(err.contains("z.png") && err.contains("decode"), "{err}");
}

#[test]
fn emoji_folder_when_present() {
    let Some(dir) = common::fixture("emoji/png64") else {
        return;
    };
    let set = folder::open(&dir, Some(32)).unwrap();
    assert_eq!((set.len(), set.channels, set.height), (3786, 3, 32));
}

#[test]
fn builtin_mnist5k_matches_its_source() {
    let set = data::builtin::mnist5k().unwrap();
    assert_eq!((set.len(), set.height, set.width), (5000, 28, 28));
    let labels = set.labels.as_ref().unwrap();
    for c in 0..10 {
        assert_eq!(labels.iter().filter(|&&l| l == c).count(), 500);
    }
    let Some(csv) = common::fixture("mnist-5k/mnist_5k.csv.gz") else {
        println!("compared counts only");
        return;
    };
    let text = String::from_utf8(idx::read_maybe_gz(&csv).unwrap()).unwrap();
    for (i, line) in text.lines().enumerate() {
        let v: Vec<u8> = line.split(',').map(|x| x.trim().parse().unwrap()).collect();
        assert_eq!(&v[..784], set.image(i), "image {i}");
        assert_eq!(v[784] as u32, labels[i], "label {i}");
    }
}

#[test]
fn fashion_mnist_when_installed() {
    if !Path::new(data::FASHION_MNIST_DIR).exists() {
        println!(
            "SKIP: {} is absent (scripts/install-data.sh installs it)",
            data::FASHION_MNIST_DIR
        );
        return;
    }
    let train = data::open("fashion-mnist", Split::Train, None).unwrap();
    let test = data::open("fashion-mnist", Split::Test, None).unwrap();
    assert_eq!((train.len(), test.len()), (60000, 10000));
    let l = test.labels.unwrap();
    assert!((0..10).all(|c| l.iter().filter(|&&x| x == c).count() == 1000));
}

#[test]
fn idx_common_names_dashed_dotted_raw_gzipped() {
    let px: Vec<u8> = (0..2 * 2 * 3).map(|i| i as u8 * 7).collect();
    let images = idx_bytes(&[2, 2, 3], &px);
    let labels = idx_bytes(&[2], &[4, 9]);
    for (img_name, lab_name, split) in [
        (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            Split::Train,
        ),
        (
            "train-images.idx3-ubyte",
            "train-labels.idx1-ubyte",
            Split::Train,
        ),
        (
            "train-images.idx3-ubyte.gz",
            "train-labels.idx1-ubyte.gz",
            Split::Train,
        ),
        (
            "t10k-images.idx3-ubyte",
            "t10k-labels.idx1-ubyte.gz",
            Split::Test,
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte",
            Split::Test,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let enc = |b: &[u8], name: &str| {
            if name.ends_with(".gz") {
                gz(b)
            } else {
                b.to_vec()
            }
        };
        write(&dir.path().join(img_name), &enc(&images, img_name));
        write(&dir.path().join(lab_name), &enc(&labels, lab_name));
        assert!(idx::looks_like_idx_dir(dir.path()), "{img_name}");
        // Through the auto-detecting entry point, as `--data DIR` does.
        let set = data::open(dir.path().to_str().unwrap(), split, None).unwrap();
        assert_eq!((set.len(), set.height, set.width), (2, 2, 3), "{img_name}");
        assert_eq!(set.image(1), &px[6..], "{img_name}");
        assert_eq!(set.labels, Some(vec![4, 9]), "{img_name}");
    }
}

#[test]
fn idx_images_file_given_directly_finds_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let px: Vec<u8> = (0..3 * 2 * 2).map(|i| 255 - i as u8).collect();
    let img = dir.path().join("train-images.idx3-ubyte.gz");
    write(&img, &gz(&idx_bytes(&[3, 2, 2], &px)));
    write(
        &dir.path().join("train-labels.idx1-ubyte"),
        &idx_bytes(&[3], &[0, 5, 2]),
    );
    for spec in [
        img.to_str().unwrap().to_string(),
        format!("mnist:{}", img.display()),
    ] {
        // The file is the split: Test is not a reason to look elsewhere.
        let set = data::open(&spec, Split::Test, None).unwrap();
        assert_eq!(set.pixels, px, "{spec}");
        assert_eq!(set.labels, Some(vec![0, 5, 2]), "{spec}");
        assert_eq!(set.class_names.len(), 10);
    }
    // Without labels beside it: unlabelled.
    let lone = dir.path().join("my-digits-idx3-ubyte");
    write(&lone, &idx_bytes(&[1, 2, 2], &px[..4]));
    let set = data::open(lone.to_str().unwrap(), Split::Train, None).unwrap();
    assert_eq!((set.len(), set.labels), (1, None));
    // A file that is not IDX: named, with what would have been accepted.
    let txt = dir.path().join("notes.txt");
    write(&txt, b"hello");
    let err = format!(
        "{:#}",
        data::open(txt.to_str().unwrap(), Split::Train, None).unwrap_err()
    );
    assert!(
        err.contains("notes.txt") && err.contains("not an IDX images file"),
        "{err}"
    );
}

#[test]
fn missing_data_lists_every_name_looked_for() {
    // Training files only, test split asked for.
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("train-images.idx3-ubyte"),
        &idx_bytes(&[1, 1, 1], &[0]),
    );
    let err = format!(
        "{:#}",
        data::open(dir.path().to_str().unwrap(), Split::Test, None).unwrap_err()
    );
    for name in idx::idx_names("t10k", "images") {
        assert!(err.contains(&name), "{name} missing from {err}");
    }
    // Nothing recognisable: IDX names of both splits, CIFAR-10 batches, images, and what was
    // skipped.
    let empty = tempfile::tempdir().unwrap();
    write(&empty.path().join("readme.txt"), b"x");
    let err = format!(
        "{:#}",
        data::open(empty.path().to_str().unwrap(), Split::Train, None).unwrap_err()
    );
    for name in idx::idx_names("train", "images")
        .into_iter()
        .chain(idx::idx_names("t10k", "images"))
        .chain([
            "data_batch_1.bin".into(),
            "test_batch.bin".into(),
            "PNG/JPEG".into(),
        ])
    {
        assert!(err.contains(&name), "{name} missing from {err}");
    }
    assert!(err.contains("1 not PNG/JPEG (readme.txt)"), "{err}");
}

#[test]
fn image_folder_reports_what_it_skipped() {
    let png = |p: &Path| {
        image::GrayImage::from_pixel(4, 4, image::Luma([10]))
            .save(p)
            .unwrap()
    };
    // Unlabelled: images directly in the folder; other files and folders are skipped.
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a.png"));
    png(&dir.path().join("b.PNG"));
    write(&dir.path().join("notes.txt"), b"x");
    write(&dir.path().join(".DS_Store"), b"x");
    std::fs::create_dir(dir.path().join("extra")).unwrap();
    // A dangling symbolic link (an image name whose target is gone).
    std::os::unix::fs::symlink(dir.path().join("gone.png"), dir.path().join("link.png")).unwrap();
    let (set, skipped) = folder::open_report(dir.path(), None).unwrap();
    assert_eq!(set.len(), 2);
    let reasons: Vec<(String, folder::SkipReason)> = skipped
        .iter()
        .map(|k| {
            (
                k.path.file_name().unwrap().to_string_lossy().to_string(),
                k.reason.clone(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "link.png".into(),
                folder::SkipReason::Unreadable("No such file or directory (os error 2)".into())
            ),
            (".DS_Store".into(), folder::SkipReason::NotAnImage),
            ("notes.txt".into(), folder::SkipReason::NotAnImage),
            ("extra".into(), folder::SkipReason::IgnoredFolder),
        ]
    );
    assert_eq!(
        folder::skip_summary(&skipped).unwrap(),
        "skipped 4 entries: 2 not PNG/JPEG (.DS_Store, notes.txt), 1 unreadable (link.png: No such file or directory (os error 2)), 1 folder not read (extra)"
    );
    // Classes: a non-image in a class, an empty class, a nested folder.
    let dir = tempfile::tempdir().unwrap();
    for c in ["cat", "dog", "empty"] {
        std::fs::create_dir(dir.path().join(c)).unwrap();
    }
    png(&dir.path().join("cat/1.png"));
    png(&dir.path().join("dog/1.jpg.png"));
    write(&dir.path().join("dog/info.json"), b"{}");
    std::fs::create_dir(dir.path().join("dog/nested")).unwrap();
    let (set, skipped) = folder::open_report(dir.path(), None).unwrap();
    assert_eq!(set.class_names, vec!["cat", "dog"]);
    assert_eq!(set.labels, Some(vec![0, 1]));
    let summary = folder::skip_summary(&skipped).unwrap();
    assert_eq!(
        summary,
        "skipped 3 entries: 1 not PNG/JPEG (info.json), 1 empty class folder (empty), 1 folder not read (nested)"
    );
    // Nothing skipped: no summary.
    let clean = tempfile::tempdir().unwrap();
    png(&clean.path().join("x.png"));
    assert!(
        folder::open_report(clean.path(), None)
            .unwrap()
            .1
            .is_empty()
    );
}
