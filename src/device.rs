//! Choosing the compute device: `cpu`, `wgpu`, `vulkan` or `cuda[:N]` (the CLI's `--device`).
//!
//! [`DeviceSpec::open`] checks up front what burn would otherwise discover by panicking deep
//! inside a kernel launch: that this binary was built with the backend's cargo feature, and for
//! CUDA that the driver library, NVRTC and the toolkit headers NVRTC compiles against are
//! present. Every failure is an error that says what was looked for and how to fix it.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A compute device as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn-flex on the CPU (pure Rust, all cores): `cpu` (alias `flex`).
    Cpu,
    /// burn's wgpu backend, graphics API chosen at run time: `wgpu` (alias `gpu`).
    Wgpu,
    /// burn's wgpu backend pinned to Vulkan (SPIR-V kernels): `vulkan`.
    Vulkan,
    /// burn's CUDA backend on GPU `N` (`cuda:N`), or the default GPU (`cuda`).
    Cuda(Option<usize>),
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "cpu" | "flex" => DeviceSpec::Cpu,
            "wgpu" | "gpu" => DeviceSpec::Wgpu,
            "vulkan" => DeviceSpec::Vulkan,
            "cuda" => DeviceSpec::Cuda(None),
            other => match other.strip_prefix("cuda:") {
                Some(n) => match n.parse::<usize>() {
                    Ok(n) => DeviceSpec::Cuda(Some(n)),
                    Err(_) => bail!(
                        "bad device `{s}`: the GPU index after `cuda:` must be a number (e.g. cuda:0)"
                    ),
                },
                None => bail!("unknown device `{s}` (cpu, wgpu, vulkan, cuda or cuda:N)"),
            },
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu => write!(f, "wgpu"),
            DeviceSpec::Vulkan => write!(f, "vulkan"),
            DeviceSpec::Cuda(None) => write!(f, "cuda"),
            DeviceSpec::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The cargo feature a binary needs for this device (None for the CPU).
    pub fn cargo_feature(&self) -> Option<&'static str> {
        match self {
            DeviceSpec::Cpu => None,
            DeviceSpec::Wgpu => Some("wgpu"),
            DeviceSpec::Vulkan => Some("vulkan"),
            DeviceSpec::Cuda(_) => Some("cuda"),
        }
    }

    /// Whether this binary was built with the device's backend.
    pub fn is_built(&self) -> bool {
        match self {
            DeviceSpec::Cpu => true,
            DeviceSpec::Wgpu => cfg!(feature = "wgpu"),
            DeviceSpec::Vulkan => cfg!(feature = "vulkan"),
            DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    /// Opens the device, after checking that it can work (see the module docs), and runs one
    /// tiny computation on it so that a failure shows here rather than mid-run.
    pub fn open(&self) -> Result<Device> {
        if !self.is_built() {
            let feature = self.cargo_feature().unwrap_or_default();
            bail!(
                "this binary was built without `--device {self}` support: rebuild with \
                 `cargo build --release --features {feature}`"
            );
        }
        match self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu => {
                checked(self, Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
            }
            #[cfg(feature = "vulkan")]
            DeviceSpec::Vulkan => checked(
                self,
                Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
            ),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => {
                cuda::probe(*index)?;
                let index = match index {
                    Some(n) => burn::tensor::DeviceIndex::Specified(*n),
                    None => burn::tensor::DeviceIndex::Default,
                };
                checked(self, Device::cuda(index))
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("is_built() ruled this device out"),
        }
    }
}

/// The device, once [`smoke_test`] passed on it.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn checked(spec: &DeviceSpec, device: Device) -> Result<Device> {
    smoke_test(spec, &device)?;
    Ok(device)
}

/// Adds 1 + 2 on the device and reads the result back; burn's GPU runtimes panic when the
/// adapter or driver fails, which is caught here and turned into an error.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn smoke_test(spec: &DeviceSpec, device: &Device) -> Result<()> {
    use burn::tensor::{Tensor, TensorData};
    let device = device.clone();
    let message = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let hook = std::panic::take_hook();
    {
        let message = message.clone();
        std::panic::set_hook(Box::new(move |info| {
            *message.lock().unwrap() = info.to_string();
        }));
    }
    let result = std::panic::catch_unwind(move || {
        let x = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0], [2]), &device);
        x.sum().into_data().try_into_vec::<f32>().map(|v| v[0])
    });
    std::panic::set_hook(hook);
    match result {
        Ok(Ok(3.0)) => Ok(()),
        Ok(Ok(v)) => {
            bail!("device `{spec}` computed 1 + 2 = {v}: the device or its driver is faulty")
        }
        Ok(Err(e)) => bail!("device `{spec}` could not return data: {e:?}"),
        Err(_) => bail!(
            "device `{spec}` failed to start: {}",
            message.lock().unwrap().trim()
        ),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! What burn's CUDA runtime (cubecl-cuda through cudarc) loads when it starts, checked in the
    //! same order: the driver library, then NVRTC, then the toolkit headers.

    use anyhow::{Result, bail};

    /// Whether cudarc finds library `name` (`cuda` or `nvrtc`), and the file names it tries.
    fn library_present(name: &str) -> (bool, Vec<String>) {
        // SAFETY: loading a system library runs its initialisers, as cudarc itself does with
        // the same names when burn starts the device.
        let found = unsafe {
            match name {
                "cuda" => cudarc::driver::sys::is_culib_present(),
                _ => cudarc::nvrtc::sys::is_culib_present(),
            }
        };
        (found, cudarc::get_lib_name_candidates(name))
    }

    pub(super) fn probe(index: Option<usize>) -> Result<()> {
        let (found, names) = library_present("cuda");
        if !found {
            bail!(
                "--device cuda: the NVIDIA driver library was not found (looked for {}). \
                 Install the NVIDIA driver, or add the folder holding libcuda.so to \
                 LD_LIBRARY_PATH",
                names.join(", ")
            );
        }
        let (found, names) = library_present("nvrtc");
        if !found {
            bail!(
                "--device cuda: NVRTC, the CUDA runtime compiler that builds ddpm's kernels, was \
                 not found (looked for {}). Install the CUDA toolkit and add its lib64 folder \
                 to LD_LIBRARY_PATH",
                names.join(", ")
            );
        }
        let Some(root) = cubecl_cuda::install::cuda_path() else {
            bail!(
                "--device cuda: no CUDA toolkit found for NVRTC's headers (looked at $CUDA_PATH, \
                 /usr/local/cuda, /opt/cuda and /usr/bin/nvcc). Set CUDA_PATH to the toolkit \
                 folder (the one holding include/cuda_fp16.h)"
            );
        };
        let header = root.join("include").join("cuda_fp16.h");
        if !header.exists() {
            bail!(
                "--device cuda: the CUDA toolkit headers NVRTC needs are missing: {} does not \
                 exist. Set CUDA_PATH to the toolkit folder (the one holding include/cuda_fp16.h)",
                header.display()
            );
        }
        if let Err(e) = cudarc::driver::result::init() {
            bail!("--device cuda: the CUDA driver failed to initialise: {e:?}");
        }
        let count = cudarc::driver::result::device::get_count()
            .map_err(|e| anyhow::anyhow!("--device cuda: cannot count the GPUs: {e:?}"))?;
        if count <= 0 {
            bail!("--device cuda: the CUDA driver reports no GPU on this machine");
        }
        if let Some(n) = index
            && n >= count as usize
        {
            bail!(
                "--device cuda:{n}: this machine has {count} CUDA GPU(s), numbered 0 to {}",
                count - 1
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("flex", DeviceSpec::Cpu),
            ("wgpu", DeviceSpec::Wgpu),
            ("GPU", DeviceSpec::Wgpu),
            ("vulkan", DeviceSpec::Vulkan),
            ("cuda", DeviceSpec::Cuda(None)),
            ("cuda:3", DeviceSpec::Cuda(Some(3))),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d, "{s}");
            assert_eq!(d.to_string().parse::<DeviceSpec>().unwrap(), d);
        }
        assert_eq!(DeviceSpec::Cuda(Some(1)).to_string(), "cuda:1");
    }

    #[test]
    fn bad_device_names_are_clear_errors() {
        let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(
            e.contains("unknown device `tpu`") && e.contains("cuda:N"),
            "{e}"
        );
        let e = "cuda:x".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("must be a number"), "{e}");
        assert!("cuda:".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn a_backend_missing_from_the_build_names_its_feature() {
        let cpu = DeviceSpec::Cpu.open().unwrap();
        assert_eq!(cpu, Device::flex());
        for spec in [
            DeviceSpec::Wgpu,
            DeviceSpec::Vulkan,
            DeviceSpec::Cuda(Some(0)),
        ] {
            if spec.is_built() {
                continue;
            }
            let e = spec.open().unwrap_err().to_string();
            let feature = spec.cargo_feature().unwrap();
            assert!(
                e.contains(&format!("--features {feature}")) && e.contains("built without"),
                "{e}"
            );
        }
    }
}

/// Serialises the draws from the device's random generator.
///
/// burn's backends keep one random generator per device for the whole process: a model's
/// initial weights and the dropout keys are drawn from it after `Device::seed`. Two threads
/// that draw at the same time (two training runs in one process, as a library user or the
/// test harness may start) would interleave their draws, and a seeded run would not get the
/// weights its seed promises. Every model initialisation and every seed-then-draw in this
/// crate holds this guard throughout. It is re-entrant on one thread (a seeded initialisation
/// holds it and then initialises), released when the outermost guard drops.
pub fn rng_guard() -> RngGuard {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if HELD.with(|h| h.get()) {
        return RngGuard(None);
    }
    // A panic while holding it leaves no state behind to repair.
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    HELD.with(|h| h.set(true));
    RngGuard(Some(guard))
}

thread_local! {
    static HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Holds the device generator for this thread ([`rng_guard`]).
pub struct RngGuard(Option<std::sync::MutexGuard<'static, ()>>);

impl Drop for RngGuard {
    fn drop(&mut self) {
        if self.0.is_some() {
            HELD.with(|h| h.set(false));
        }
    }
}
