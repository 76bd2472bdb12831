//! Training: a tiny model overfits a batch; checkpoints round-trip; an interrupted and resumed
//! run equals an uninterrupted one bit for bit; divergence stops the run and keeps the last good
//! checkpoint; mismatched checkpoints are refused with a clear error.

mod common;
use common::final_state;
use std::path::Path;

use burn::tensor::{Device, Tensor};
use ddpm::diffusion::{DiffusionConfig, GaussianDiffusion, LossType, VarianceType};
use ddpm::kernels::Precision;
use ddpm::model::UNetConfig;
use ddpm::params;
use ddpm::sampling::NoiseSource;
use ddpm::train::checkpoint::{
    CheckpointMeta, latest_checkpoint, load_checkpoint, save_checkpoint,
};
use ddpm::train::optim::{OptimConfig, TrainState};
use ddpm::train::resample::{LossSecondMomentSampler, SamplerState, TimestepSampling};
use ddpm::train::trainer::collect_grads;
use ddpm::train::{RunConfig, TrainConfig, Trainer};

fn tiny_run_config(max_steps: u64) -> RunConfig {
    let mut model = UNetConfig::tiny(28, 1);
    model.base_channels = 8;
    RunConfig {
        model,
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            data: "mnist5k".into(),
            batch_size: 4,
            max_steps: Some(max_steps),
            seed: 11,
            optim: OptimConfig {
                lr: 1e-3,
                warmup_steps: 2,
                ema_decay: 0.9,
                ..Default::default()
            },
            sample_every: 0,
            checkpoint_every: 3,
            preview_count: 0,
            keep_checkpoints: 5,
            ..Default::default()
        },
    }
}

#[test]
fn tiny_model_overfits_one_fixed_batch() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let cfg = UNetConfig::tiny(8, 1);
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default());
    let mut model = {
        // Other tests in this binary seed and draw from the same generator.
        let _rng = ddpm::device::rng_guard();
        device.seed(0);
        cfg.init(&ad)
    };
    let mut noise = NoiseSource::new(0);
    let shape = [8, 1, 8, 8];
    let x0 = noise.normal(shape, &device).clamp(-1.0, 1.0);
    let eps = noise.normal(shape, &device);
    let t: Vec<usize> = vec![10, 100, 200, 300, 400, 500, 700, 900];
    let tf: Vec<f32> = t.iter().map(|&i| i as f32).collect();
    let xt = diffusion.q_sample(x0.clone(), &t, eps.clone());
    let mut state = TrainState::new(
        params::collect(&model)
            .into_iter()
            .map(|p| p.values)
            .collect(),
    );
    let opt = OptimConfig {
        lr: 2e-3,
        warmup_steps: 0,
        ..Default::default()
    };
    let mut losses = Vec::new();
    for _ in 0..300 {
        let xt = Tensor::<4>::from_data(xt.to_data(), &ad);
        let e = Tensor::<4>::from_data(eps.to_data(), &ad);
        let x0a = Tensor::<4>::from_data(x0.to_data(), &ad);
        let raw = model.forward(xt.clone(), &tf, true);
        let loss = diffusion.training_loss(raw, x0a, e, xt, &t);
        losses.push(
            loss.clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()[0],
        );
        let g = collect_grads(&model, &loss.backward());
        state.update(&g, &opt);
        model = params::assign(model, &state.params, true);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    println!(
        "overfit: loss {first:.4} -> {last:.5} ({:.0}x)",
        first / last
    );
    assert!(
        first / last >= 10.0,
        "loss fell only from {first} to {last}"
    );
}

#[test]
fn checkpoint_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let layout = vec![
        ("a.weight".to_string(), vec![2, 3]),
        ("b".to_string(), vec![4]),
    ];
    let mut state = TrainState::new(vec![
        (0..6).map(|i| i as f32 * 0.5).collect(),
        vec![-1.0, 2.0, 3.5, 1e-7],
    ]);
    state.update(&[vec![0.1; 6], vec![-0.2; 4]], &OptimConfig::default());
    let meta = CheckpointMeta {
        step: state.step,
        wall_seconds: 1.5,
        images_seen: 64,
        loss: 0.25,
        task_state: None,
        kernel_choices: None,
    };
    let path = save_checkpoint(dir.path(), &layout, &state, &meta, 2).unwrap();
    assert_eq!(latest_checkpoint(dir.path()).unwrap().unwrap(), path);
    let (back, m2) = load_checkpoint(&path, &layout).unwrap();
    assert_eq!(back.params, state.params);
    assert_eq!(back.ema, state.ema);
    assert_eq!(back.m, state.m);
    assert_eq!(back.v, state.v);
    assert_eq!((m2.step, m2.images_seen), (1, 64));
    // A layout that does not match is refused with a message naming file and tensor.
    let wrong = vec![
        ("a.weight".to_string(), vec![3, 2]),
        ("b".to_string(), vec![4]),
    ];
    let err = load_checkpoint(&path, &wrong).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("a.weight") && err.contains("[2, 3]"),
        "{err}"
    );
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit() {
    let f32_params = resumed_equals_uninterrupted(Precision::F32);
    if Precision::Bf16.check_cpu().is_err() {
        println!("no AVX512_BF16 here: bf16 training resume not tested");
        return;
    }
    // Mixed precision resumes bit for bit too (the run records its precision), and it is
    // really in effect: the weights differ from the f32 run's.
    let bf16_params = resumed_equals_uninterrupted(Precision::Bf16);
    assert_ne!(f32_params, bf16_params);
}

/// Runs a to 6 steps, b to 3 then resumed to 6, in `precision`; checks they agree bit for bit
/// and returns the final weights.
fn resumed_equals_uninterrupted(precision: Precision) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let config = |steps| {
        let mut c = tiny_run_config(steps);
        c.train.precision = precision;
        c
    };
    Trainer::create(&a, config(6), &device)
        .unwrap()
        .train()
        .unwrap();
    // Stop b after 3 steps, then resume to 6.
    Trainer::create(&b, config(3), &device)
        .unwrap()
        .train()
        .unwrap();
    let mut resumed = Trainer::resume(&b, &device, |tc| tc.max_steps = Some(6)).unwrap();
    assert_eq!(resumed.state.step, 3);
    resumed.train().unwrap();
    let (sa, sb) = (final_state(&a), final_state(&b));
    assert_eq!(sa.step, 6);
    assert_eq!(sb.step, 6);
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&sa.params) == bits(&sb.params), "weights differ");
    assert!(bits(&sa.ema) == bits(&sb.ema), "EMA differs");
    assert!(
        bits(&sa.m) == bits(&sb.m) && bits(&sa.v) == bits(&sb.v),
        "Adam moments differ"
    );
    // The logs agree on the losses too.
    let la = std::fs::read_to_string(a.join("log.csv")).unwrap();
    let lb = std::fs::read_to_string(b.join("log.csv")).unwrap();
    let losses = |l: &str| {
        l.lines()
            .skip(1)
            .map(|r| r.split(',').nth(1).unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&la), losses(&lb));
    // An existing run is not silently overwritten.
    let err = Trainer::create(&a, tiny_run_config(6), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    sa.params
}

/// A linear decay over 4 steps after a 2-step warm-up: step 3 runs at half the peak and step 4
/// at zero, so Adam leaves the weights of step 3 as they were (its moments and the EMA still
/// move); a run stopped at step 2 and resumed keeps the recorded end and matches bit for bit.
#[test]
fn decaying_learning_rate_ends_at_zero_and_resumes_bit_for_bit() {
    use ddpm::train::LrSchedule;
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let config = |steps| {
        let mut c = tiny_run_config(steps);
        c.train.optim.lr_schedule = LrSchedule::Linear;
        c.train.optim.decay_steps = Some(4);
        c.train.checkpoint_every = 1;
        c
    };
    assert_eq!(config(4).train.optim.lr_at(3), 5e-4);
    Trainer::create(&a, config(4), &device)
        .unwrap()
        .train()
        .unwrap();
    let cfg = RunConfig::load(&a).unwrap();
    let layout = params::layout(&cfg.model.init(&device));
    let at = |run: &Path, step: u64| {
        load_checkpoint(
            &run.join("checkpoints")
                .join(ddpm::train::checkpoint::checkpoint_name(step)),
            &layout,
        )
        .unwrap()
        .0
    };
    let (s2, s3, s4) = (at(&a, 2), at(&a, 3), at(&a, 4));
    assert!(s2.params != s3.params, "step 3 (lr 5e-4) moved nothing");
    assert!(s3.params == s4.params, "step 4 (lr 0) moved the weights");
    assert!(s3.m != s4.m && s3.ema != s4.ema);

    Trainer::create(&b, config(2), &device)
        .unwrap()
        .train()
        .unwrap();
    let mut resumed = Trainer::resume(&b, &device, |tc| tc.max_steps = Some(4)).unwrap();
    assert_eq!(resumed.config().train.optim.decay_steps, Some(4));
    resumed.train().unwrap();
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    let sb = final_state(&b);
    assert_eq!(sb.step, 4);
    assert!(bits(&s4.params) == bits(&sb.params) && bits(&s4.ema) == bits(&sb.ema));
    assert!(bits(&s4.m) == bits(&sb.m) && bits(&s4.v) == bits(&sb.v));

    // A decay without an end is refused before anything is written.
    let mut open = config(4);
    open.train.optim.decay_steps = None;
    let c = dir.path().join("c");
    let err = Trainer::create(&c, open, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--steps"), "{err}");
    assert!(!c.join("config.json").exists());
}

/// The step named by a divergence error ("loss is NaN at step N: …").
fn diverged_at(err: &str) -> u64 {
    err.split("at step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in {err}"))
}

/// A tiny run that diverges at once: learning rate 1e32, no warm-up, no clipping.
fn diverging_config() -> RunConfig {
    let mut cfg = tiny_run_config(50);
    cfg.train.optim.lr = 1e32;
    cfg.train.optim.warmup_steps = 0;
    cfg.train.optim.grad_clip = 0.0;
    cfg
}

#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan");
    let mut cfg = diverging_config();
    cfg.train.checkpoint_every = 1;
    let err = Trainer::create(&run, cfg, &device)
        .unwrap()
        .train()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("diverged") && err.contains("checkpoint"),
        "{err}"
    );
    let failed_at = diverged_at(&err);
    let state = final_state(&run);
    assert!(
        state.step <= failed_at,
        "checkpoint step {} after failure at {failed_at}",
        state.step
    );
    // The kept checkpoint loads and resuming reports the same divergence instead of panicking.
    let mut again = Trainer::resume(&run, &device, |_| {}).unwrap();
    assert!(again.train().is_err());
}

#[test]
fn divergence_with_the_optimiser_on_the_device_leaves_the_last_step_in_the_state() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan-dev");
    let mut cfg = diverging_config();
    cfg.train.checkpoint_every = 1000;
    let mut t = Trainer::create(&run, cfg, &device).unwrap();
    t.optim_on_device = true;
    let init = t.state.params.clone();
    let err = t.train().unwrap_err().to_string();
    assert!(err.contains("diverged"), "{err}");
    let failed_at = diverged_at(&err);
    // The in-memory state is the last completed step's: its count and its weights (read back
    // from the device), as with the host update.
    assert!(failed_at > 0);
    assert_eq!(t.state.step, failed_at);
    assert!(
        t.state.params != init,
        "weights not read back from the device"
    );
}

#[test]
fn mismatched_config_and_crash_leftovers() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    Trainer::create(&run, tiny_run_config(3), &device)
        .unwrap()
        .train()
        .unwrap();
    let good = latest_checkpoint(&run).unwrap().unwrap();
    // A crash mid-save leaves a temporary folder and maybe a half-written later step:
    // neither is taken for the latest checkpoint.
    let ck = run.join("checkpoints");
    std::fs::create_dir_all(ck.join(".tmp-step-0000009-1234")).unwrap();
    std::fs::write(
        ck.join(".tmp-step-0000009-1234/model.safetensors"),
        b"partial",
    )
    .unwrap();
    assert_eq!(latest_checkpoint(&run).unwrap().unwrap(), good);
    let t = Trainer::resume(&run, &device, |tc| tc.max_steps = Some(4)).unwrap();
    assert_eq!(t.state.step, 3);
    // A config.json that no longer matches the weights is refused, naming the problem.
    let mut cfg = RunConfig::load(&run).unwrap();
    cfg.model.base_channels = 16;
    cfg.save(&run).unwrap();
    let err = format!(
        "{:#}",
        Trainer::resume(&run, &device, |_| {}).err().unwrap()
    );
    assert!(
        err.contains("model.safetensors") && err.contains("the model in config.json needs"),
        "{err}"
    );
    // Corrupt weights file.
    let mut cfg = RunConfig::load(&run).unwrap();
    cfg.model.base_channels = 8;
    cfg.save(&run).unwrap();
    std::fs::write(good.join("ema.safetensors"), b"garbage").unwrap();
    let err = format!(
        "{:#}",
        Trainer::resume(&run, &device, |_| {}).err().unwrap()
    );
    assert!(
        err.contains("ema.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn damaged_newest_checkpoint_falls_back_to_the_newest_intact_one() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let config = |steps| {
        let mut c = tiny_run_config(steps);
        c.train.log_every = 1;
        c
    };
    Trainer::create(&a, config(6), &device)
        .unwrap()
        .train()
        .unwrap();
    Trainer::create(&b, config(6), &device)
        .unwrap()
        .train()
        .unwrap();
    let ck = b.join("checkpoints");
    let (s3, s6) = (ck.join("step-0000003"), ck.join("step-0000006"));
    assert!(s3.is_dir() && s6.is_dir());

    // A truncated tensor file in the newest checkpoint: resume passes over it to step 3.
    let f = s6.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let mut t = Trainer::resume(&b, &device, |_| {}).unwrap();
    assert_eq!(t.state.step, 3);
    assert_eq!(t.skipped.len(), 1);
    assert_eq!(t.skipped[0].dir, s6);
    assert!(
        t.skipped[0].problem.contains("model.safetensors"),
        "{}",
        t.skipped[0].problem
    );
    // Set aside (kept, not resumed from or pruned), and `latest` names the checkpoint resumed.
    assert!(!s6.exists() && ck.join("damaged-step-0000006").is_dir());
    assert_eq!(latest_checkpoint(&b).unwrap().unwrap(), s3);
    // The log is cut back to the checkpoint resumed from.
    let log = std::fs::read_to_string(b.join("log.csv")).unwrap();
    let last = log.lines().last().unwrap().split(',').next().unwrap();
    assert_eq!(last, "3", "{log}");
    // Continuing from step 3 gives exactly the uninterrupted run.
    t.train().unwrap();
    let (sa, sb) = (final_state(&a), final_state(&b));
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(sb.step, 6);
    assert!(bits(&sa.params) == bits(&sb.params), "weights differ");
    assert!(bits(&sa.ema) == bits(&sb.ema), "EMA differs");

    // An unreadable state.json in the newest checkpoint: the same fallback, a second set-aside.
    std::fs::write(s6.join("state.json"), b"{\"step\": 6, \"wall_se").unwrap();
    let t = Trainer::resume(&b, &device, |_| {}).unwrap();
    assert_eq!(t.state.step, 3);
    assert!(
        t.skipped[0].problem.contains("state.json"),
        "{}",
        t.skipped[0].problem
    );
    assert!(ck.join("damaged-step-0000006-2").is_dir());

    // Nothing intact: a clear error naming every checkpoint and its problem.
    std::fs::write(s3.join("ema.safetensors"), b"").unwrap();
    let err = format!("{:#}", Trainer::resume(&b, &device, |_| {}).err().unwrap());
    assert!(
        err.contains("step-0000003") && err.contains("ema.safetensors"),
        "{err}"
    );
}

#[test]
fn every_checkpoint_redraws_the_loss_plot() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("r");
    let mut cfg = tiny_run_config(4);
    cfg.train.log_every = 1;
    cfg.train.checkpoint_every = 2;
    let mut t = Trainer::create(&run, cfg, &device).unwrap();
    t.train().unwrap();
    let png = run.join("loss.png");
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (640, 360));
    // The curve is drawn (blue pixels), not only the axes.
    let blue = img.pixels().filter(|p| p.0 == [30, 90, 200]).count();
    assert!(blue > 50, "{blue} curve pixels");
    let rows = ddpm::train::session::read_loss_log(&run).unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(rows.iter().all(|r| r.1.is_finite() && r.1 > 0.0));
}

#[test]
fn importance_sampled_t_resumes_bit_for_bit_and_leaves_uniform_after_warm_up() {
    // Nichol & Dhariwal's L_vlb with importance-sampled t: the sampler's loss history is part
    // of the run's state, so a resumed run must draw the same t and land on the same weights.
    let device = Device::flex();
    let config = |steps: u64| {
        let mut c = tiny_run_config(steps);
        c.diffusion = DiffusionConfig {
            num_timesteps: 20,
            variance: VarianceType::Learned,
            loss: LossType::Vlb,
            ..Default::default()
        };
        c.model.out_channels = Some(2);
        c.train.batch_size = 8;
        c.train.t_sampling = TimestepSampling::Importance;
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    Trainer::create(&a, config(60), &device)
        .unwrap()
        .train()
        .unwrap();
    Trainer::create(&b, config(30), &device)
        .unwrap()
        .train()
        .unwrap();
    let mut resumed = Trainer::resume(&b, &device, |tc| tc.max_steps = Some(60)).unwrap();
    assert_eq!(resumed.state.step, 30);
    resumed.train().unwrap();
    let (sa, sb) = (final_state(&a), final_state(&b));
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&sa.params) == bits(&sb.params), "weights differ");
    assert!(bits(&sa.ema) == bits(&sb.ema), "EMA differs");

    // 480 draws over 20 terms fill every history: p_t now follows the losses, not 1/T.
    let meta = |run: &Path| -> CheckpointMeta {
        let dir = latest_checkpoint(run).unwrap().unwrap();
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap()
    };
    let (ma, mb) = (meta(&a), meta(&b));
    assert_eq!(ma.task_state, mb.task_state);
    let state: SamplerState = serde_json::from_value(ma.task_state.unwrap()).unwrap();
    let sampler = LossSecondMomentSampler::from_state(20, &state).unwrap();
    assert!(sampler.warmed_up());
    let p = sampler.probabilities();
    let (lo, hi) = p
        .iter()
        .fold((1.0f64, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    println!("importance sampling after 60 steps: p_t from {lo:.4} to {hi:.4} (uniform 0.05)");
    assert!(hi > 2.0 * lo, "p_t still uniform: {p:?}");

    // The sampler weights the bound's terms: other losses are refused by name.
    let mut wrong = config(1);
    wrong.diffusion.loss = LossType::Simple;
    let err = format!(
        "{:#}",
        Trainer::create(&dir.path().join("c"), wrong, &device)
            .err()
            .unwrap()
    );
    assert!(err.contains("--loss vlb"), "{err}");
}

/// Relative difference ‖a − b‖ / ‖b‖ over all arrays.
fn rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        d += (*x as f64 - *y as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    (d / n.max(1e-300)).sqrt()
}

#[test]
fn optimiser_on_the_device_follows_the_host_update_and_resumes() {
    // What `ddpm train` runs on a GPU, run here on the CPU device against the host update.
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (host, dev, part) = (
        dir.path().join("host"),
        dir.path().join("dev"),
        dir.path().join("part"),
    );
    let mut config = tiny_run_config(6);
    // The tiny net's gradient norm is above 1 at first, so clipping is exercised too.
    config.train.optim.grad_clip = 1.0;
    config.train.log_every = 1;
    let mut h = Trainer::create(&host, config.clone(), &device).unwrap();
    assert!(
        !h.optim_on_device,
        "the CPU keeps the host update by default"
    );
    h.train().unwrap();
    let mut d = Trainer::create(&dev, config.clone(), &device).unwrap();
    d.optim_on_device = true;
    d.train().unwrap();
    let (sh, sd) = (final_state(&host), final_state(&dev));
    assert_eq!(sd.step, 6);
    // Same formulas; only the f32 summation of the squared gradient norms differs. Weights and
    // EMA are compared by how far they moved from the initial weights (the moments start at 0).
    let init = final_state(&part_init(&part, &config)).params;
    let moved = |w: &[Vec<f32>]| -> Vec<Vec<f32>> {
        w.iter()
            .zip(&init)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
            .collect()
    };
    for (what, a, b) in [
        ("weights' change", moved(&sd.params), moved(&sh.params)),
        ("EMA's change", moved(&sd.ema), moved(&sh.ema)),
        ("m", sd.m.clone(), sh.m.clone()),
        ("v", sd.v.clone(), sh.v.clone()),
    ] {
        let r = rel(&a, &b);
        assert!(r < 1e-4, "{what}: relative difference {r:e}");
    }
    // And the state really moved: six steps change the weights and fill both moments.
    assert!(rel(&sd.params, &init) > 1e-3);
    assert!(sd.v.iter().flatten().any(|&x| x > 0.0));
    // The log's grad_norm column (the clipping input) agrees too.
    let norms = |run: &Path| -> Vec<f64> {
        let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
        let header: Vec<&str> = log.lines().next().unwrap().split(',').collect();
        let k = header.iter().position(|c| *c == "grad_norm").unwrap();
        log.lines()
            .skip(1)
            .map(|r| r.split(',').nth(k).unwrap().parse().unwrap())
            .collect()
    };
    let (nd, nh) = (norms(&dev), norms(&host));
    assert_eq!(nd.len(), 6);
    assert!(nh.iter().any(|&n| n > 1.0), "no step was clipped: {nh:?}");
    for (a, b) in nd.iter().zip(nh) {
        assert!((a - b).abs() <= 1e-4 * b + 1e-4, "grad norm {a} vs {b}");
    }
    // Stopped at 3 and resumed to 6 (state downloaded to the checkpoint, uploaded again):
    // the same ops in the same order on the CPU device, so the same bits.
    let part2 = dir.path().join("part2");
    let mut p = Trainer::create(&part2, tiny_run_config(3), &device).unwrap();
    p.optim_on_device = true;
    p.train().unwrap();
    let mut p = Trainer::resume(&part2, &device, |tc| tc.max_steps = Some(6)).unwrap();
    p.optim_on_device = true;
    p.train().unwrap();
    let sp = final_state(&part2);
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(sp.step, 6);
    assert!(
        bits(&sp.params) == bits(&sd.params),
        "weights differ after resume"
    );
    assert!(bits(&sp.ema) == bits(&sd.ema), "EMA differs after resume");
    assert!(
        bits(&sp.m) == bits(&sd.m) && bits(&sp.v) == bits(&sd.v),
        "moments differ after resume"
    );
}

/// A run of zero steps in `run`: the initial weights of `config`'s seed.
fn part_init(run: &Path, config: &RunConfig) -> std::path::PathBuf {
    let mut c = config.clone();
    c.train.max_steps = Some(0);
    Trainer::create(run, c, &Device::flex())
        .unwrap()
        .train()
        .unwrap();
    run.to_path_buf()
}
