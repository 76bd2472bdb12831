//! `ddpm fid A B` and the data-set feature cache shared with `ddpm eval fid`.

use super::prelude::*;

#[derive(Args, Clone)]
pub(crate) struct FidNetArgs {
    /// The FID Inception weights (default: $DDPM_INCEPTION, then ~/.cache/ddpm/; see
    /// scripts/get-fid-weights.sh).
    #[arg(long)]
    pub(crate) inception: Option<PathBuf>,
    /// Images per Inception call.
    #[arg(long, default_value_t = 32)]
    pub(crate) fid_batch: usize,
}

#[derive(Args)]
pub(crate) struct FidArgs {
    /// First set: a stats file (*.stats), a data set (`fashion-mnist@test`, `mnist5k`, a folder).
    pub(crate) a: String,
    /// Second set, same forms.
    pub(crate) b: String,
    /// Use at most this many images of each data set (evenly spaced).
    #[arg(long)]
    pub(crate) n: Option<usize>,
    /// Save the statistics of the second set to this stats file.
    #[arg(long)]
    pub(crate) save_stats: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) net: FidNetArgs,
}

/// One side of an FID comparison.
pub(crate) enum FidSet {
    Stats(FeatureStats),
    Features(Vec<f32>),
}

pub(crate) fn fid_progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{elapsed_precise}} < {{eta_precise}}] {{bar:30}} {{pos}}/{{len}} images"
        ))
        .unwrap(),
    );
    pb
}

/// Features of (up to) `n` evenly spaced images of a data set, cached on disk
/// ([`ddpm::metrics::evaluate::dataset_features`] with a progress bar).
pub(crate) fn dataset_features(
    spec: &str,
    split: Split,
    n: Option<usize>,
    net: &FidInception,
    batch: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let pb = fid_progress(n.unwrap_or(0), &format!("features of {spec}"));
    let cache = ddpm::metrics::evaluate::cache_dir();
    let (f, cached) = ddpm::metrics::evaluate::dataset_features(
        spec,
        split,
        n,
        net,
        batch,
        device,
        &cache,
        |d, total| {
            pb.set_length(total as u64);
            pb.set_position(d as u64)
        },
    )?;
    pb.finish_and_clear();
    if cached {
        println!(
            "{spec} ({split:?}, {} images): cached features in {}",
            f.len() / FEATURE_DIM,
            cache.join("fid-features").display()
        );
    }
    Ok(f)
}

pub(crate) fn open_fid_set(
    spec: &str,
    n: Option<usize>,
    net: &mut Option<FidInception>,
    args: &FidNetArgs,
    device: &Device,
) -> Result<FidSet> {
    let path = std::path::Path::new(spec);
    if path.is_file() {
        return Ok(FidSet::Stats(FeatureStats::load(path)?));
    }
    let (name, split) = match spec.rsplit_once('@') {
        Some((n, "train")) => (n, Split::Train),
        Some((n, "test")) => (n, Split::Test),
        Some((_, other)) => bail!("`{spec}`: unknown split `{other}` (train or test)"),
        None => (spec, Split::Train),
    };
    if net.is_none() {
        *net = Some(FidInception::load(
            &locate_weights(args.inception.as_deref())?,
            device,
        )?);
    }
    let f = dataset_features(
        name,
        split,
        n,
        net.as_ref().unwrap(),
        args.fid_batch,
        device,
    )?;
    Ok(FidSet::Features(f))
}

pub(crate) fn stats_of(set: &FidSet) -> FeatureStats {
    match set {
        FidSet::Stats(s) => s.clone(),
        FidSet::Features(f) => FeatureStats::from_features(f, FEATURE_DIM),
    }
}

pub(crate) fn cmd_fid(a: FidArgs, device: &Device) -> Result<()> {
    let mut net = None;
    let t0 = Instant::now();
    let sa = open_fid_set(&a.a, a.n, &mut net, &a.net, device)?;
    let sb = open_fid_set(&a.b, a.n, &mut net, &a.net, device)?;
    let (st_a, st_b) = (stats_of(&sa), stats_of(&sb));
    if let Some(p) = &a.save_stats {
        st_b.save(p)?;
        println!("saved statistics of {} to {}", a.b, p.display());
    }
    let fid = frechet_distance(&st_a, &st_b)?;
    println!(
        "FID({}, {}) = {fid:.4}  (n = {} vs {})",
        a.a, a.b, st_a.n, st_b.n
    );
    if let (FidSet::Features(fa), FidSet::Features(fb)) = (&sa, &sb) {
        let (p, r) = precision_recall(fa, fb, FEATURE_DIM, 3);
        println!(
            "precision {p:.4}, recall {r:.4} (k = 3; {} as the real set)",
            a.a
        );
    }
    println!("{:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
