//! The real training loop (Algorithm 1) learns the exact predictor of two-point data, for every
//! objective. Data: 8×8 images that are all black or all white, so ε*, x₀* and v* are known in
//! closed form (the finite-set oracle). A network trained by `Trainer` must approach the
//! oracle's prediction in every quarter of the t range; a wrong t range, target or time
//! embedding leaves at least one quarter far off.

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::diffusion::{Denoiser, DiffusionConfig, GaussianDiffusion, Prediction};
use ddpm::model::UNetConfig;
use ddpm::oracle::FiniteSetOracle;
use ddpm::sampling::NoiseSource;
use ddpm::train::optim::OptimConfig;
use ddpm::train::{Run, RunConfig, TrainConfig, Trainer};
use rand::{Rng, SeedableRng, rngs::StdRng};

const SIDE: usize = 8;

fn write_two_point_data(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..64 {
        let v = if i % 2 == 0 { 0u8 } else { 255 };
        image::GrayImage::from_pixel(SIDE as u32, SIDE as u32, image::Luma([v]))
            .save(dir.join(format!("{i:02}.png")))
            .unwrap();
    }
}

/// Mean squared difference per pixel between the trained network and the oracle, in the
/// network's own parameterisation (ε, x₀ and v all have unit second moment per pixel here), for
/// each quarter of the t range.
fn train_and_compare(prediction: Prediction, steps: u64) -> [f64; 4] {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_two_point_data(&data);
    let device = Device::flex();
    let mut model = UNetConfig::tiny(SIDE, 1);
    model.attention_resolutions = vec![];
    let config = RunConfig {
        model,
        diffusion: DiffusionConfig {
            prediction,
            ..Default::default()
        },
        train: TrainConfig {
            data: data.display().to_string(),
            batch_size: 64,
            max_steps: Some(steps),
            seed: 1,
            optim: OptimConfig {
                lr: 2e-3,
                warmup_steps: 20,
                ema_decay: 0.99,
                ..Default::default()
            },
            sample_every: 0,
            checkpoint_every: steps,
            preview_count: 0,
            ..Default::default()
        },
    };
    let run = tmp.path().join("run");
    Trainer::create(&run, config, &device)
        .unwrap()
        .train()
        .unwrap();
    // The EMA weights: an average over the last ~100 steps of SGD noise.
    let (config, net, _) = Run::open(&run).unwrap().model(&device, true).unwrap();
    let d = GaussianDiffusion::new(config.diffusion);
    let dim = SIDE * SIDE;
    let oracle = FiniteSetOracle::new(&d, vec![vec![-1.0; dim], vec![1.0; dim]]);
    let mut rng = StdRng::seed_from_u64(9);
    let mut noise = NoiseSource::new(10);
    let n = 128;
    let mut out = [0.0; 4];
    for (q, o) in out.iter_mut().enumerate() {
        let t: Vec<usize> = (0..n)
            .map(|_| rng.random_range(q * 250..(q + 1) * 250))
            .collect();
        let x0: Vec<f32> = (0..n)
            .flat_map(|_| {
                let v = if rng.random::<bool>() { 1.0 } else { -1.0 };
                std::iter::repeat_n(v, dim)
            })
            .collect();
        let x0 = Tensor::<4>::from_data(TensorData::new(x0, [n, 1, SIDE, SIDE]), &device);
        let eps = noise.normal([n, 1, SIDE, SIDE], &device);
        let x_t = d.q_sample(x0, &t, eps);
        let got = Denoiser::forward(&net, x_t.clone(), &t, None);
        let eps_star = oracle.forward(x_t.clone(), &t, None);
        let want = d.output_from_eps(x_t, &t, eps_star);
        *o = (got - want).square().mean().into_scalar_f64();
    }
    out
}

trait Scalar {
    fn into_scalar_f64(self) -> f64;
}

impl Scalar for Tensor<1> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .unwrap()[0]
    }
}

#[test]
fn training_learns_the_exact_predictor_in_every_quarter_of_t_for_every_objective() {
    let steps: u64 = std::env::var("OBJ_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut all = Vec::new();
    for prediction in [Prediction::Epsilon, Prediction::X0, Prediction::V] {
        let e = train_and_compare(prediction, steps);
        println!(
            "{prediction:?}: mean squared error against the oracle by t quarter: {:.4} {:.4} {:.4} {:.4}",
            e[0], e[1], e[2], e[3]
        );
        all.push((prediction, e));
    }
    for (prediction, e) in all {
        for (q, v) in e.iter().enumerate() {
            assert!(*v < 0.03, "{prediction:?}: quarter {q} error {v}");
        }
    }
}
