//! `ddpm eval nll|fid`: the papers' metrics for a run.

use super::prelude::*;

#[derive(Subcommand)]
pub(crate) enum EvalCommand {
    /// The variational bound on the negative log-likelihood, in bits/dim (all T terms).
    Nll(NllArgs),
    /// FID, precision and recall of N samples against a data split (TF-2015 Inception).
    Fid(EvalFidArgs),
}

#[derive(Args)]
pub(crate) struct EvalFidArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Reference data set (default: the run's).
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// Split of the reference data.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub(crate) split: Split,
    /// Number of generated images (and at most this many reference images).
    #[arg(long, default_value_t = 10000)]
    pub(crate) n: usize,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Clean classifier run (`ddpm classifier train --clean`) that judges guided samples:
    /// reports the fraction it assigns to the requested class.
    #[arg(long)]
    pub(crate) judge: Option<PathBuf>,
    /// Name of this evaluation in metrics.json (default: from the sampler and steps).
    #[arg(long)]
    pub(crate) tag: Option<String>,
    #[command(flatten)]
    pub(crate) net: FidNetArgs,
}

#[derive(Args)]
pub(crate) struct NllArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// Data set (default: the run's).
    #[arg(long)]
    pub(crate) data: Option<String>,
    /// Split.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub(crate) split: Split,
    /// Number of images (evenly spaced through the split). Each costs T network calls.
    #[arg(long, default_value_t = 64)]
    pub(crate) n: usize,
    /// (image, t) pairs per network call.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch_size: usize,
    /// Seed of the noise in each x_t.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Output folder for nll_terms.csv and nll_terms.png (default: RUN/eval).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

pub(crate) fn cmd_eval_nll(a: NllArgs, device: &Device) -> Result<()> {
    let (config, model, step) = Run::open(&a.run)?.model(device, !a.raw)?;
    let diffusion = GaussianDiffusion::new(config.diffusion.clone());
    let m = &config.model;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let set = data::open(&spec, a.split, Some(m.image_size))?;
    if set.channels != m.in_channels {
        bail!(
            "data `{spec}` has {} channels, the model {}",
            set.channels,
            m.in_channels
        );
    }
    let n = a.n.clamp(1, set.len());
    let t_max = diffusion.num_timesteps();
    println!(
        "NLL bound of {} (step {step}, {} weights, σ² = {:?}) on {n} {:?} images of `{spec}`: {} network evaluations",
        a.run.display(),
        if a.raw { "raw" } else { "EMA" },
        config.diffusion.variance,
        a.split,
        n * t_max
    );
    let pb = indicatif::ProgressBar::new((n * t_max) as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} nll [{elapsed_precise} < {eta_precise}] {bar:30} {pos}/{len} (image, t) pairs").unwrap(),
    );
    let t0 = Instant::now();
    let terms = ddpm::likelihood::bound_of_images(
        &diffusion,
        &model,
        &set,
        n,
        a.batch_size,
        a.seed,
        device,
        |done, _| pb.set_position(done as u64),
    );
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let summary = ddpm::likelihood::BoundSummary::from_terms(&terms);
    let (total, total_se, prior, l0, mid) = (
        summary.total,
        summary.total_se,
        summary.prior,
        summary.decoder_l0,
        summary.sum_kl,
    );
    println!(
        "NLL ≤ {total:.4} ± {total_se:.4} bits/dim (mean ± standard error over {n} images, {secs:.0} s)"
    );
    println!("  prior L_T            {prior:.3e}");
    println!("  Σ L_(t−1), t=2..T    {mid:.4}");
    println!("  decoder L_0          {l0:.4}");
    let out = a.out.clone().unwrap_or_else(|| a.run.join("eval"));
    std::fs::create_dir_all(&out)?;
    let per_t = summary.per_t;
    let mut csv = String::from("t,bits_per_dim\n");
    for (i, v) in per_t.iter().enumerate() {
        csv.push_str(&format!("{},{v:.6e}\n", i + 1));
    }
    std::fs::write(out.join("nll_terms.csv"), csv)?;
    ddpm::image::line_plot(&per_t, true, 800, 400, &out.join("nll_terms.png"))?;
    println!(
        "wrote {} and {} (L_t against t = 1..{t_max}, log y)",
        out.join("nll_terms.csv").display(),
        out.join("nll_terms.png").display()
    );
    update_metrics(
        &a.run,
        "nll",
        serde_json::json!({
            "bits_per_dim": total, "standard_error": total_se, "prior": prior, "decoder_l0": l0,
            "sum_kl": mid, "n": n, "split": format!("{:?}", a.split).to_lowercase(), "data": spec,
            "step": step, "ema": !a.raw, "seconds": secs,
        }),
    )?;
    Ok(())
}

pub(crate) fn cmd_eval_fid(a: EvalFidArgs, device: &Device) -> Result<()> {
    let (config, model, step) = Run::open(&a.run)?.model(device, true)?;
    let m = &config.model;
    let plan = a
        .sampling
        .plan(&config.diffusion, m.num_classes(), "ddim", device)?;
    let spec = a.data.clone().unwrap_or_else(|| config.train.data.clone());
    let judge = match &a.judge {
        Some(dir) => Some(Run::open(dir)?.classifier(device, true)?),
        None => None,
    };
    let num_classes = a
        .sampling
        .num_classes(&plan)
        .or(judge.as_ref().map(|j| j.0.model.num_classes))
        .unwrap_or(1);
    // The class requested for sample i (guided or not: the judge scores unguided samples
    // against the same labels, which gives the chance level).
    let label = |i: usize| a.sampling.label(i, num_classes);
    let net = FidInception::load(&locate_weights(a.net.inception.as_deref())?, device)?;
    let real = dataset_features(&spec, a.split, Some(a.n), &net, a.net.fid_batch, device)?;
    println!(
        "FID of {} (step {step}, EMA) with {}: {} samples against {} {:?} images of `{spec}`",
        a.run.display(),
        a.sampling.describe(&plan),
        a.n,
        real.len() / FEATURE_DIM,
        a.split
    );
    let t0 = Instant::now();
    let pb = fid_progress(a.n, "sample + features");
    let judge_fn = judge
        .as_ref()
        .map(|(_, clf)| move |x: Tensor<4>| ddpm::train::classifier::predict(clf, x));
    let opts = a.sampling.batch_options(&plan, a.seed, &label);
    let r = ddpm::metrics::evaluate::fid_of_sampler(
        &net,
        &real,
        &plan.diffusion,
        plan.sampler.as_ref(),
        &model,
        [m.in_channels, m.image_size, m.image_size],
        a.n,
        device,
        &opts,
        a.net.fid_batch,
        judge_fn.as_ref().map(|j| {
            (
                j as &dyn Fn(Tensor<4>) -> Vec<usize>,
                &label as &dyn Fn(usize) -> usize,
            )
        }),
        |done| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let (fid, precision, recall, accuracy) = (r.fid, r.precision, r.recall, r.judged_accuracy);
    let (t_sample, t_feat) = (r.sampling_seconds, r.inception_seconds);
    let first = r.first;
    println!(
        "FID {fid:.3}, precision {precision:.4}, recall {recall:.4}{}  ({:.0} s: sampling {t_sample:.0} s, Inception {t_feat:.0} s)",
        match accuracy {
            Some(acc) => format!(", judged in requested class {acc:.4}"),
            None => String::new(),
        },
        secs
    );
    let name = plan.config.name();
    let tag = a.tag.clone().unwrap_or_else(|| {
        format!(
            "fid_{}{}",
            name,
            if name != "ddpm" {
                format!("{}", a.sampling.steps)
            } else {
                String::new()
            }
        )
    });
    let out = a.run.join("eval");
    std::fs::create_dir_all(&out)?;
    if let Some(x) = first {
        let k = x.dims()[0];
        let grid = out.join(format!("{tag}-samples.png"));
        ddpm::image::save_grid(x, (k as f64).sqrt().ceil() as usize, &grid)?;
        println!("wrote {}", grid.display());
    }
    update_metrics(
        &a.run,
        &tag,
        serde_json::json!({
            "fid": fid, "precision": precision, "recall": recall, "n": a.n, "reference": spec,
            "split": format!("{:?}", a.split).to_lowercase(), "sampler": name, "sampler_config": plan.config, "steps": plan.sampler.timesteps().len(),
            "eta": a.sampling.eta, "step": step, "seconds": secs, "sampling_seconds": t_sample, "inception_seconds": t_feat,
            "corrector_steps": a.sampling.corrector_steps, "snr": a.sampling.snr,
            "classifier": a.sampling.classifier.as_ref().map(|p| p.display().to_string()),
            "class": a.sampling.class, "guidance_scale": a.sampling.classifier.as_ref().map(|_| a.sampling.guidance_scale),
            "cfg_scale": a.sampling.cfg_scale,
            "judge": a.judge.as_ref().map(|p| p.display().to_string()), "judged_accuracy": accuracy,
        }),
    )?;
    println!("wrote {}", a.run.join("metrics.json").display());
    Ok(())
}
