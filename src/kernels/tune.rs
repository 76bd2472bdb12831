//! Per-shape choice among im2col + GEMM, the direct kernel and Winograd F(4×4, 3×3), by
//! measurement on the machine at hand instead of a size rule tuned on one CPU
//! ([`KernelPolicy::Auto`] once the tuner is enabled; the CLI enables it).
//!
//! The first convolution of each shape (input, output channels, kernel, padding, batch) times
//! every algorithm that can run it on random data of that shape and keeps the fastest; the choice is then fixed
//! for the process and, with a cache file, for the machine (keyed by the CPU and thread count;
//! processes that start together take turns through a lock file, so they agree). A training
//! run records the choices it used in its checkpoints, and a resumed run pins them
//! ([`pin`]), so the resumed trajectory uses the same arithmetic as the uninterrupted one.
//!
//! An input gradient of a stride-1 convolution is itself a stride-1 convolution (of `dy` with
//! the flipped kernel), so it is tuned as one, under its own shape.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::conv::{ConvGeom, conv2d_backward_with, conv2d_forward_with};

/// The algorithms of a stride-1 convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// The direct AVX-512 kernel (`kernels::direct`).
    Direct,
    /// im2col + GEMM.
    Gemm,
    /// Winograd F(4×4, 3×3) (`kernels::winograd`; 3×3 kernels only).
    Winograd,
}

impl Algo {
    /// `direct`, `gemm` or `winograd`.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Direct => "direct",
            Algo::Gemm => "gemm",
            Algo::Winograd => "winograd",
        }
    }

    fn parse(s: &str) -> Option<Algo> {
        match s {
            "direct" => Some(Algo::Direct),
            "gemm" => Some(Algo::Gemm),
            "winograd" => Some(Algo::Winograd),
            _ => None,
        }
    }

    /// Whether this algorithm can run `g` on this CPU.
    pub fn runs(self, g: &ConvGeom) -> bool {
        match self {
            Algo::Gemm => true,
            Algo::Direct => g.is_wide() && super::direct::available(),
            Algo::Winograd => super::winograd::applies(g),
        }
    }
}

/// A specialised kernel (direct or Winograd) must beat the GEMM route by this factor to be
/// chosen: near-ties go to the general route, so timing noise does not flip choices between
/// machines of one kind.
pub const DIRECT_MARGIN: f64 = 0.97;

struct Tuner {
    enabled: bool,
    /// Choices in force: pinned by a resumed run, read from the cache, or measured.
    choices: BTreeMap<String, Algo>,
    /// The per-machine cache file, when one is used.
    cache: Option<PathBuf>,
    /// Why the cache was given up, reported once.
    cache_problem: Option<String>,
}

static TUNER: Mutex<Tuner> = Mutex::new(Tuner {
    enabled: false,
    choices: BTreeMap::new(),
    cache: None,
    cache_problem: None,
});

fn tuner() -> std::sync::MutexGuard<'static, Tuner> {
    // A panic while holding the lock leaves a usable table (a plain map).
    TUNER.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key of a convolution shape, e.g. `32x28x28->64 k3x3 p1,1,1,1 b64`.
pub fn shape_key(g: &ConvGeom) -> String {
    let [t, l, b, r] = g.pad;
    format!(
        "{}x{}x{}->{} k{}x{} s{} p{t},{l},{b},{r} b{}",
        g.c_in, g.h, g.w, g.c_out, g.kh, g.kw, g.stride, g.batch
    )
}

/// This machine as the cache knows it: CPU model and stepping, the kernels' instruction-set
/// level ([`super::simd::level`]), and the thread count (the algorithms scale differently with
/// threads).
pub fn machine_key() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    // The algorithm list and the kernels' revision are part of the key: choices measured
    // before Winograd existed, or before a kernel got faster, are not reused.
    format!(
        "{} (family {}, model {}, stepping {}), simd {}, {} threads, gemm/direct/winograd r{}",
        field("model name"),
        field("cpu family"),
        field("model"),
        field("stepping"),
        super::simd::level().name(),
        rayon::current_num_threads(),
        KERNEL_REVISION
    )
}

/// Raised whenever a kernel's speed changes enough to move choices, so that cached choices
/// are measured again. 2: the Winograd products kernel, register-transposed padding and
/// vectorised GroupNorm; 3: Winograd tasks spread over the threads for small images; 4: the
/// Winograd weight gradient's products on their own kernel.
const KERNEL_REVISION: u32 = 4;

/// Turns measuring on for [`KernelPolicy::Auto`](super::KernelPolicy::Auto), with choices
/// kept in `cache` (a JSON file, created when missing) across processes on this machine.
/// Without `cache` the choices last for the process.
pub fn enable(cache: Option<&Path>) {
    let mut t = tuner();
    t.enabled = true;
    t.cache = cache.map(Path::to_path_buf);
}

/// Whether measuring is on.
pub fn enabled() -> bool {
    tuner().enabled
}

/// Fixes choices (a resumed run's, from its checkpoint); they win over the cache and over
/// measurement. Unknown algorithm names are ignored (the shape is then measured).
pub fn pin(choices: &BTreeMap<String, String>) {
    let mut t = tuner();
    for (k, v) in choices {
        if let Some(a) = Algo::parse(v) {
            t.choices.insert(k.clone(), a);
        }
    }
}

/// The choices made so far in this process, for a checkpoint.
pub fn snapshot() -> BTreeMap<String, String> {
    tuner()
        .choices
        .iter()
        .map(|(k, v)| (k.clone(), v.name().to_string()))
        .collect()
}

/// Seconds of the fastest of three runs of `f` after one warm-up run.
fn best_of_three(mut f: impl FnMut()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Times every algorithm that runs `g` on random data of its shape (seconds each, GEMM first).
pub fn measure(g: &ConvGeom) -> Vec<(Algo, f64)> {
    let x = crate::noise::lcg_values(g.batch * g.in_len(), 1, 1, 0.5);
    let w = crate::noise::lcg_values(g.c_out * g.col_rows(), 2, 1, 0.5);
    [Algo::Gemm, Algo::Direct, Algo::Winograd]
        .into_iter()
        .filter(|a| a.runs(g))
        .map(|a| {
            let secs = best_of_three(|| {
                std::hint::black_box(conv2d_forward_with(g, &x, &w, None, a));
            });
            (a, secs)
        })
        .collect()
}

/// Times the weight gradient of `g` through im2col + GEMM and, where it runs, Winograd
/// (seconds each, GEMM first).
pub fn measure_weight_grad(g: &ConvGeom) -> Vec<(Algo, f64)> {
    let x = crate::noise::lcg_values(g.batch * g.in_len(), 1, 1, 0.5);
    let w = crate::noise::lcg_values(g.c_out * g.col_rows(), 2, 1, 0.5);
    let [_, c, h, wd] = g.out_shape();
    let dy = crate::noise::lcg_values(g.batch * c * h * wd, 3, 1, 0.5);
    [Algo::Gemm, Algo::Winograd]
        .into_iter()
        .filter(|a| a.runs(g))
        .map(|a| {
            let secs = best_of_three(|| {
                std::hint::black_box(conv2d_backward_with(
                    g,
                    &x,
                    &w,
                    &dy,
                    [false, true, false],
                    Algo::Gemm,
                    a,
                ));
            });
            (a, secs)
        })
        .collect()
}

/// The algorithm for the stride-1 convolution `g`: the pinned, cached or measured choice when
/// the tuner is on, else `rule(g)`. A choice that cannot run here (the direct kernel, pinned
/// by a run resumed from a machine with AVX-512 on one without) gives way to `rule(g)`.
pub fn choose(g: &ConvGeom, rule: impl Fn(&ConvGeom) -> Algo) -> Algo {
    let algo = choose_keyed(shape_key(g), || rule(g), || decide(measure(g)));
    if algo.runs(g) { algo } else { rule(g) }
}

/// The algorithm for the weight gradient of `g` (im2col + GEMM or Winograd), chosen as
/// [`choose`] chooses, under the key `dW <shape>`; `rule` when the tuner is off.
pub fn choose_weight_grad(g: &ConvGeom, rule: Algo) -> Algo {
    choose_keyed(
        format!("dW {}", shape_key(g)),
        || rule,
        || decide(measure_weight_grad(g)),
    )
}

fn choose_keyed(key: String, rule: impl FnOnce() -> Algo, decide: impl Fn() -> Algo) -> Algo {
    let mut t = tuner();
    if let Some(&a) = t.choices.get(&key) {
        return a;
    }
    if !t.enabled {
        return rule();
    }
    let algo = match t.cache.clone() {
        Some(path) => match decide_with_cache(&path, &key, &decide) {
            Ok(a) => a,
            Err(e) => {
                if t.cache_problem.is_none() {
                    eprintln!(
                        "warning: kernel tuning cache {}: {e}; choosing per process",
                        path.display()
                    );
                    t.cache_problem = Some(e);
                }
                t.cache = None;
                decide()
            }
        },
        None => decide(),
    };
    t.choices.insert(key, algo);
    algo
}

/// The fastest of the measured algorithms (GEMM first): a specialised one only when it beats
/// the GEMM by [`DIRECT_MARGIN`].
fn decide(times: Vec<(Algo, f64)>) -> Algo {
    let gemm = times[0].1;
    match times[1..].iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        Some(&(a, t)) if t < DIRECT_MARGIN * gemm => a,
        _ => Algo::Gemm,
    }
}

type CacheFile = BTreeMap<String, BTreeMap<String, String>>;

/// Reads the machine's choice for `key` from the cache, or measures it and writes it back,
/// holding the cache's lock file throughout so concurrent processes agree.
fn decide_with_cache(path: &Path, key: &str, decide: impl Fn() -> Algo) -> Result<Algo, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let machine = machine_key();
    let mut file: CacheFile = match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| format!("not a valid cache ({e})"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheFile::new(),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(a) = file
        .get(&machine)
        .and_then(|m| m.get(key))
        .and_then(|s| Algo::parse(s))
    {
        return Ok(a);
    }
    let algo = decide();
    file.entry(machine)
        .or_default()
        .insert(key.to_string(), algo.name().to_string());
    let json = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    crate::tensorfile::write_atomic(path, json.as_bytes()).map_err(|e| format!("{e:#}"))?;
    Ok(algo)
    // The lock is released when `lock` is dropped.
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(c: usize, batch: usize) -> ConvGeom {
        ConvGeom {
            batch,
            c_in: c,
            h: 8,
            w: 8,
            c_out: c,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: [1, 1, 1, 1],
        }
    }

    // One test: the tuner is process-wide state.
    #[test]
    fn rule_until_enabled_then_measured_cached_and_pinned() {
        // Off: the rule decides and nothing is recorded.
        let g = geom(16, 2);
        assert_eq!(choose(&g, |_| Algo::Gemm), Algo::Gemm);
        assert!(snapshot().is_empty());

        // A pinned choice that cannot run here gives way to the rule: the direct kernel on a
        // 1×1 convolution (on no CPU), and on any shape without AVX-512 (a run resumed from a
        // machine that has it, or `DDPM_SIMD=avx2`).
        let pointwise = ConvGeom {
            kh: 1,
            kw: 1,
            pad: [0; 4],
            ..geom(8, 2)
        };
        let wide = geom(12, 2);
        pin(&BTreeMap::from([
            (shape_key(&pointwise), "direct".to_string()),
            (shape_key(&wide), "direct".to_string()),
        ]));
        assert_eq!(choose(&pointwise, |_| Algo::Gemm), Algo::Gemm);
        let direct_here = super::super::direct::available();
        assert_eq!(
            choose(&wide, |_| Algo::Gemm),
            if direct_here {
                Algo::Direct
            } else {
                Algo::Gemm
            }
        );
        if !direct_here {
            println!("no AVX-512 here: the direct kernel never runs, nothing more to tune");
            return;
        }
        assert_eq!(choose(&g, |_| Algo::Direct), Algo::Direct);

        // Pinned choices win over the rule.
        let pinned = geom(24, 3);
        pin(&BTreeMap::from([(
            shape_key(&pinned),
            "direct".to_string(),
        )]));
        assert_eq!(choose(&pinned, |_| Algo::Gemm), Algo::Direct);

        // On, with a cache: a measured choice is stable and written for the machine.
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("conv-choices.json");
        enable(Some(&cache));
        let g2 = geom(32, 2);
        let first = choose(&g2, |_| unreachable!("measured, not ruled"));
        for _ in 0..3 {
            assert_eq!(choose(&g2, |_| unreachable!()), first);
        }
        let file: CacheFile =
            serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
        assert_eq!(file[&machine_key()][&shape_key(&g2)], first.name());
        let snap = snapshot();
        assert_eq!(snap[&shape_key(&g2)], first.name());
        assert_eq!(snap[&shape_key(&pinned)], "direct");

        // A choice already in the cache is read, not measured: write the opposite of what
        // measuring picked for a new shape, and the tuner must return it.
        let g3 = geom(40, 2);
        let measured = decide(measure(&g3));
        let opposite = if measured == Algo::Direct {
            Algo::Gemm
        } else {
            Algo::Direct
        };
        let mut file = file;
        file.entry(machine_key())
            .or_default()
            .insert(shape_key(&g3), opposite.name().to_string());
        std::fs::write(&cache, serde_json::to_string(&file).unwrap()).unwrap();
        assert_eq!(choose(&g3, |_| unreachable!()), opposite);

        // A damaged cache is reported and given up: choices are then per process.
        std::fs::write(&cache, "{ not json").unwrap();
        let g4 = geom(48, 2);
        let a = choose(&g4, |_| unreachable!());
        assert_eq!(choose(&g4, |_| unreachable!()), a);
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), "{ not json");
    }

    #[test]
    fn shape_keys_tell_shapes_apart() {
        let a = geom(32, 4);
        assert_eq!(shape_key(&a), "32x8x8->32 k3x3 s1 p1,1,1,1 b4");
        let mut b = a;
        b.pad = [0, 1, 1, 1];
        assert_ne!(shape_key(&a), shape_key(&b));
        assert!(machine_key().contains("threads"));
    }
}
