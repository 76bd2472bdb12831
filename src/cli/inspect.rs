//! `ddpm inspect`: the forward process on real images and the schedule's key numbers.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct InspectArgs {
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

pub(crate) fn cmd_inspect(a: InspectArgs, device: &Device) -> Result<()> {
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
