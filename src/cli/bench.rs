//! `ddpm bench`: training and sampling speed of a preset.

use super::prelude::*;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Model preset.
    #[arg(long, default_value = "small28")]
    pub(crate) preset: String,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: usize,
    /// Timed iterations per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub(crate) iters: usize,
    /// Measure the FID Inception network instead (images/s at 299×299, batch --batch-size).
    #[arg(long)]
    pub(crate) inception: bool,
    /// The FID weights for --inception (default: as `ddpm fid` finds them).
    #[arg(long)]
    pub(crate) inception_weights: Option<PathBuf>,
    /// Also time each phase of a training step (forward + loss, backward, gradients to the
    /// host, clip + Adam + EMA, weights back into the model) over --iters further steps, waiting
    /// for the device after each phase so that GPU work is charged to the phase that queued it;
    /// then --iters steps with clip + Adam + EMA as tensor operations on the device instead
    /// (what `ddpm train` does on a GPU).
    #[arg(long)]
    pub(crate) phases: bool,
}

/// Images/s of the FID network on random inputs.
fn bench_inception(a: &BenchArgs, device: &Device) -> Result<()> {
    let net = FidInception::load(&locate_weights(a.inception_weights.as_deref())?, device)?;
    let mut noise = NoiseSource::new(0);
    let x = noise
        .normal([a.batch_size, 3, 299, 299], device)
        .clamp(-1.0, 1.0);
    let warmup = if ddpm::kernels::is_cpu(device) { 1 } else { 3 };
    for _ in 0..warmup {
        let _ = net.forward(x.clone()).into_data();
    }
    device.sync()?;
    let t0 = Instant::now();
    for _ in 0..a.iters {
        let _ = net.forward(x.clone()).into_data();
    }
    let ips = (a.iters * a.batch_size) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "FID Inception: {ips:.1} images/s (batch {}, {} threads); 10k images ≈ {:.0} min",
        a.batch_size,
        rayon::current_num_threads(),
        10_000.0 / ips / 60.0
    );
    Ok(())
}

pub(crate) fn cmd_bench(a: BenchArgs, device: &Device) -> Result<()> {
    if a.inception {
        return bench_inception(&a, device);
    }
    let m =
        UNetConfig::preset(&a.preset).with_context(|| format!("unknown preset `{}`", a.preset))?;
    let threads = rayon::current_num_threads();
    let n_params = ddpm::params::count(&m.init(device));
    println!(
        "bench: preset {} ({} params, {}×{}×{}), batch {}, {} threads, device {:?}",
        a.preset,
        n_params,
        m.in_channels,
        m.image_size,
        m.image_size,
        a.batch_size,
        threads,
        device
    );
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default());
    let shape = [a.batch_size, m.in_channels, m.image_size, m.image_size];
    // Training step: forward + backward + fused optimiser, as in `ddpm train`.
    let ad = device.clone().autodiff();
    let model = m.init(&ad);
    let mut state = ddpm::train::optim::TrainState::new(
        ddpm::params::collect(&model)
            .into_iter()
            .map(|p| p.values)
            .collect(),
    );
    let ocfg = ddpm::train::OptimConfig::default();
    let mut noise = NoiseSource::new(0);
    let mut model = model;
    // Phases of one step: forward (+ loss), backward, gradients to the host, fused
    // clip/Adam/EMA, weights back into the model. With `timed`, every phase ends by waiting
    // for the device (a GPU runs asynchronously, so otherwise its work lands in whichever
    // phase next reads data back).
    let mut phases = [0f64; 5];
    let mut train_step = |model: ddpm::model::UNet,
                          phases: &mut [f64; 5],
                          timed: bool|
     -> Result<ddpm::model::UNet> {
        let x0 = noise.normal(shape, &ad).clamp(-1.0, 1.0);
        let eps = noise.normal(shape, &ad);
        let t: Vec<usize> = (0..a.batch_size).map(|i| (i * 997) % 1000).collect();
        if timed {
            ad.sync()?;
        }
        let mut clock = Instant::now();
        let mut lap = |k: usize, phases: &mut [f64; 5]| -> Result<()> {
            if timed {
                ad.sync()?;
                phases[k] += clock.elapsed().as_secs_f64();
                clock = Instant::now();
            }
            Ok(())
        };
        let xt = diffusion.q_sample(x0.clone(), &t, eps.clone());
        let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let raw = model.forward(xt.clone(), &tf, true);
        let loss = diffusion.training_loss(raw, x0, eps, xt, &t);
        let _ = loss.clone().into_data();
        lap(0, phases)?;
        let grads = loss.backward();
        lap(1, phases)?;
        let gs = ddpm::train::trainer::collect_grads(&model, &grads);
        lap(2, phases)?;
        state.update(&gs, &ocfg);
        lap(3, phases)?;
        let m = ddpm::params::assign(model, &state.params, true);
        lap(4, phases)?;
        Ok(m)
    };
    // Warm-up: one step on the CPU; three on a GPU, where the first steps autotune and compile
    // kernels (as bench/pytorch_unet.py gives cuDNN three).
    let warmup = if ddpm::kernels::is_cpu(device) { 1 } else { 3 };
    for k in 1..=warmup {
        let t0 = Instant::now();
        model = train_step(model, &mut [0f64; 5], false)?;
        ad.sync()?;
        // On a GPU the first steps autotune and compile kernels: say how long each took, so
        // that a run stopped by a time limit still shows where it was.
        eprintln!(
            "warm-up training step {k}/{warmup}: {:.2} s",
            t0.elapsed().as_secs_f64()
        );
    }
    ad.sync()?;
    let t0 = Instant::now();
    for _ in 0..a.iters {
        model = train_step(model, &mut phases, false)?;
    }
    ad.sync()?;
    let train_secs = t0.elapsed().as_secs_f64();
    let train_ips = (a.iters * a.batch_size) as f64 / train_secs;
    let phase_secs = if a.phases {
        let t0 = Instant::now();
        for _ in 0..a.iters {
            model = train_step(model, &mut phases, true)?;
        }
        Some(t0.elapsed().as_secs_f64())
    } else {
        None
    };
    // The same step with clipping, Adam and the EMA as tensor operations on the device
    // (what `ddpm train` does on a GPU): no gradients or weights cross to the host.
    let device_optim_ips = if a.phases {
        let mut opt = ddpm::train::device_optim::DeviceOptim::new(&state, &ad);
        let mut step = |model: ddpm::model::UNet| -> ddpm::model::UNet {
            let x0 = noise.normal(shape, &ad).clamp(-1.0, 1.0);
            let eps = noise.normal(shape, &ad);
            let t: Vec<usize> = (0..a.batch_size).map(|i| (i * 997) % 1000).collect();
            let xt = diffusion.q_sample(x0.clone(), &t, eps.clone());
            let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
            let raw = model.forward(xt.clone(), &tf, true);
            let loss = diffusion.training_loss(raw, x0, eps, xt, &t);
            // The trainer reads every step's loss (to stop on NaN), so this does too.
            let _ = loss.clone().into_data();
            opt.update(model, &loss.backward(), &ocfg).0
        };
        for k in 1..=warmup {
            let t0 = Instant::now();
            model = step(model);
            ad.sync()?;
            eprintln!(
                "warm-up step, optimiser on the device {k}/{warmup}: {:.2} s",
                t0.elapsed().as_secs_f64()
            );
        }
        ad.sync()?;
        let t0 = Instant::now();
        for _ in 0..a.iters {
            model = step(model);
        }
        ad.sync()?;
        Some((a.iters * a.batch_size) as f64 / t0.elapsed().as_secs_f64())
    } else {
        None
    };
    drop(model);
    // Sampling: one network call per image per step, no autodiff.
    let inf = m.init(device);
    let x = noise.normal(shape, device);
    let t: Vec<usize> = vec![500; a.batch_size];
    for k in 1..=warmup {
        let t0 = Instant::now();
        let _ = ddpm::diffusion::Denoiser::forward(&inf, x.clone(), &t, None).into_data();
        eprintln!(
            "warm-up forward pass {k}/{warmup}: {:.2} s",
            t0.elapsed().as_secs_f64()
        );
    }
    device.sync()?;
    let t0 = Instant::now();
    for _ in 0..a.iters {
        let _ = ddpm::diffusion::Denoiser::forward(&inf, x.clone(), &t, None).into_data();
    }
    let fwd_ips = (a.iters * a.batch_size) as f64 / t0.elapsed().as_secs_f64();
    println!("training:  {train_ips:8.1} images/s (forward + backward + Adam/EMA)");
    if let Some(total) = phase_secs {
        let names = [
            "forward + loss",
            "backward",
            "gradients to host",
            "clip + Adam + EMA",
            "weights into model",
        ];
        println!(
            "phases:    {:8.1} images/s with a device wait after each phase ({:.1} ms/step)",
            (a.iters * a.batch_size) as f64 / total,
            1000.0 * total / a.iters as f64
        );
        for (n, p) in names.iter().zip(phases) {
            println!(
                "           {:>5.1}% {n} ({:.1} ms/step)",
                100.0 * p / total,
                1000.0 * p / a.iters as f64
            );
        }
    }
    if let Some(ips) = device_optim_ips {
        println!(
            "training:  {ips:8.1} images/s with clip + Adam + EMA on the device (ddpm train's \
             default on GPUs)"
        );
    }
    println!(
        "sampling:  {fwd_ips:8.1} images/s per denoising step (one forward pass, {} convolutions)",
        ddpm::kernels::precision::current()
    );
    println!(
        "           = {:.3} images/s for 1000-step DDPM, {:.2} images/s for 50-step DDIM",
        fwd_ips / 1000.0,
        fwd_ips / 50.0
    );
    if let Some(mb) = peak_rss_mib() {
        println!("peak RSS:  {mb:8.0} MiB");
    }
    Ok(())
}

/// Peak resident memory of this process (Linux), MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
