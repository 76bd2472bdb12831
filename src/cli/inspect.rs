//! `ddpm inspect`: the forward process on real images and the schedule's key numbers, or
//! (`--run`) the state of a run folder.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct InspectArgs {
    /// Report on this run folder instead: its config, steps, last loss, checkpoints (sizes, and
    /// whether each reads completely) and metrics.json.
    #[arg(long)]
    pub(crate) run: Option<PathBuf>,
    /// Data set to take images from.
    #[arg(long, default_value = "mnist5k")]
    pub(crate) data: String,
    /// Timesteps (paper's t, 1..T) to show; 0 shows x_0.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,50,100,200,400,600,800,1000"
    )]
    pub(crate) t: Vec<usize>,
    /// Number of images (rows).
    #[arg(long, default_value_t = 4)]
    pub(crate) n: usize,
    /// Output PNG strip.
    #[arg(long, default_value = "forward.png")]
    pub(crate) out: PathBuf,
    /// Resize images to this side.
    #[arg(long)]
    pub(crate) image_size: Option<usize>,
    #[command(flatten)]
    pub(crate) diffusion: DiffusionArgs,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

/// Bytes in B, KB, MB or GB (powers of 1000).
fn human_bytes(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} GB", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} MB", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} KB", x / 1e3)
    } else {
        format!("{n} B")
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `ddpm inspect --run RUN`.
fn inspect_run(dir: &std::path::Path) -> Result<()> {
    let run = Run::open(dir)?;
    let r = run.report()?;
    println!("run {} ({})", dir.display(), run.kind_name());
    println!("config ({}):", dir.join("config.json").display());
    println!("{}", indent(&serde_json::to_string_pretty(&r.config)?));
    let tc = run.train_config();
    let budget = match (tc.max_steps, tc.max_minutes) {
        (Some(s), Some(m)) => format!("{s} steps or {m} min"),
        (Some(s), None) => format!("{s} steps"),
        (None, Some(m)) => format!("{m} min"),
        (None, None) => "none".into(),
    };
    match r.newest_intact().and_then(|c| c.meta.as_ref()) {
        Some(m) => println!(
            "steps: {} (budget {budget}; {} images seen, {:.1} min of training)",
            m.step,
            m.images_seen,
            m.wall_seconds / 60.0
        ),
        None => println!("steps: no intact checkpoint (budget {budget})"),
    }
    match r.last_log {
        Some((step, loss)) => println!(
            "last loss: {loss:.6} at step {step} (log.csv, {} row{})",
            r.log_rows,
            if r.log_rows == 1 { "" } else { "s" }
        ),
        None => match r.newest_intact().and_then(|c| c.meta.as_ref()) {
            Some(m) => println!(
                "last loss: {:.6} (smoothed, checkpoint at step {}; log.csv has no rows yet)",
                m.loss, m.step
            ),
            None => println!("last loss: none logged yet"),
        },
    }
    println!("checkpoints (newest first, each read in full):");
    if r.checkpoints.is_empty() {
        println!("  none");
    }
    for c in &r.checkpoints {
        let name = c.dir.file_name().unwrap_or_default().to_string_lossy();
        let latest = if c.latest { " [latest]" } else { "" };
        match (&c.meta, &c.problem) {
            (Some(m), _) => println!(
                "  {name}  {:>9}  intact, smoothed loss {:.4}{latest}",
                human_bytes(c.bytes),
                m.loss
            ),
            (None, p) => println!(
                "  {name}  {:>9}  damaged: {}{latest}",
                human_bytes(c.bytes),
                p.as_deref().unwrap_or("unreadable")
            ),
        }
    }
    match r.newest_intact().and_then(|c| c.meta.as_ref()) {
        Some(m) => println!("newest intact checkpoint: step {}", m.step),
        None => println!("newest intact checkpoint: none"),
    }
    match &r.metrics {
        Some(m) => println!(
            "metrics.json:\n{}",
            indent(&serde_json::to_string_pretty(m)?)
        ),
        None => println!("metrics.json: none (`ddpm eval fid` and `ddpm eval nll` write it)"),
    }
    match &r.loss_plot {
        Some(p) => println!("loss curve: {}", p.display()),
        None => println!("loss curve: none yet (loss.png is drawn at every checkpoint)"),
    }
    Ok(())
}

pub(crate) fn cmd_inspect(a: InspectArgs, device: &Device) -> Result<()> {
    if let Some(run) = &a.run {
        return inspect_run(run);
    }
    let dcfg = a.diffusion.config()?;
    let diffusion = GaussianDiffusion::new(dcfg);
    let s = &diffusion.schedule;
    let t_max = s.num_timesteps;
    let last = t_max - 1;
    let ln2 = std::f64::consts::LN_2;
    println!("schedule: {} with T = {t_max}", a.diffusion.schedule);
    println!(
        "  β_1 = {:.3e}, β_T = {:.3e}, Σβ = {:.4}",
        s.betas[0],
        s.betas[last],
        s.betas.iter().sum::<f64>()
    );
    println!(
        "  ᾱ_T = {:.4e}, √ᾱ_T = {:.4e}",
        s.alphas_cumprod[last], s.sqrt_alphas_cumprod[last]
    );
    println!(
        "  prior term L_T = KL(q(x_T|x_0) ‖ N(0,I)): {:.3e} bits/dim at x_0 = ±1, {:.3e} at x_0 = 0",
        ddpm::likelihood::prior_kl_nats(s, 1.0) / ln2,
        ddpm::likelihood::prior_kl_nats(s, 0.0) / ln2
    );
    println!("  √ᾱ_t (signal) and √(1−ᾱ_t) (noise) at the chosen t:");
    for &t in &a.t {
        if t == 0 {
            continue;
        }
        if t > t_max {
            bail!("t = {t} is beyond T = {t_max}");
        }
        println!(
            "    t = {t:5}: signal {:.4}, noise {:.4}, SNR {:.3e}",
            s.sqrt_alphas_cumprod[t - 1],
            s.sqrt_one_minus_alphas_cumprod[t - 1],
            s.alphas_cumprod[t - 1] / (1.0 - s.alphas_cumprod[t - 1])
        );
    }
    let set = data::open(&a.data, Split::Train, a.image_size)?;
    let (c, h, w) = (set.channels, set.height, set.width);
    // Evenly spaced images, so sorted data sets (e.g. by class) show variety.
    let n = a.n.clamp(1, set.len());
    let x0: Vec<f32> = (0..n)
        .flat_map(|k| {
            set.image(k * set.len() / n)
                .iter()
                .map(|&v| data::to_unit(v))
        })
        .collect();
    let x0 = Tensor::<4>::from_data(TensorData::new(x0, [n, c, h, w]), device);
    let mut noise = NoiseSource::new(a.seed);
    let eps = noise.normal([n, c, h, w], device);
    // Columns: one per t; rows: images. Built as an [n·len(t), c, h, w] batch in row order.
    let mut cols = Vec::new();
    for &t in &a.t {
        cols.push(if t == 0 {
            x0.clone()
        } else {
            diffusion.q_sample(x0.clone(), &vec![t - 1; n], eps.clone())
        });
    }
    let k = cols.len();
    let stacked = Tensor::stack::<5>(cols, 1).reshape([n * k, c, h, w]);
    ddpm::image::save_grid(stacked, k, &a.out)?;
    println!("wrote {} ({n} images × t = {:?})", a.out.display(), a.t);
    Ok(())
}
