//! Stub of `cubecl-llvm` 0.11.3 without LLVM.
//!
//! The real crate lowers CubeCL kernels through pliron and LLVM; its build script needs
//! `tracel-llvm-bundler`, which downloads an LLVM distribution while building and so fails on an
//! offline machine. `cubecl-cuda` depends on it unconditionally, but with its `cpp` feature it
//! compiles every kernel as CUDA C++ through NVRTC and never calls the LLVM path. This crate keeps
//! the items `cubecl-cuda` names so it still compiles; the LLVM path returns
//! [`CompilationError::Generic`] instead of PTX.

use cubecl_core::ir::amd::GfxArch;
use cubecl_core::ir::attributes::BufferIOAttr;
#[cfg(feature = "nvptx")]
use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_core::CompilationError;

/// Why every LLVM compilation fails in this build.
pub const UNAVAILABLE: &str = "this build replaces cubecl-llvm with a stub (no LLVM): \
     enable cubecl-cuda's `cpp` feature to compile kernels through NVRTC";

/// LLVM compilation targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Cpu,
    #[cfg(feature = "nvptx")]
    Nvptx,
}

/// The LLVM compiler; [`PlironCompiler::compile`] always fails here.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

/// Options of an LLVM compilation (only the fields callers set).
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    pub cpu_buffer_alignment: Option<u32>,
    pub arch: Option<GfxArch>,
    #[cfg(feature = "nvptx")]
    pub sm_arch: Option<SmArch>,
    #[cfg(feature = "nvptx")]
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    pub grid_constants: bool,
}

/// A compiled PTX module (never produced by this stub).
#[cfg(feature = "nvptx")]
#[derive(Clone, Debug)]
pub struct NvptxModule {
    pub ptx: Vec<core::ffi::c_char>,
    pub entrypoint: String,
    pub ir: String,
    pub shared_memory_size: usize,
    pub io: Vec<BufferIOAttr>,
}

/// What a compilation produces (never produced by this stub).
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    /// Stands in for the real crate's CPU JIT engine.
    Jit(Unavailable),
    #[cfg(feature = "nvptx")]
    NvptxCode(NvptxModule),
}

/// The uninhabited payload of [`PlironArtifact::Jit`].
#[derive(Clone, Copy, Debug)]
pub enum Unavailable {}

impl PlironCompiler {
    /// Always fails: there is no LLVM in this build.
    pub fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &PlironOptions,
    ) -> Result<PlironArtifact, CompilationError> {
        Err(CompilationError::Generic {
            reason: UNAVAILABLE.to_string(),
            backtrace: cubecl_core::environment::backtrace::BackTrace::capture(),
        })
    }

    pub fn extension(&self) -> &'static str {
        match self.target {
            LlvmTarget::Cpu => "plir",
            #[cfg(feature = "nvptx")]
            LlvmTarget::Nvptx => "ll",
        }
    }

    pub fn lang_tag(&self) -> &'static str {
        match self.target {
            LlvmTarget::Cpu => "mlir",
            #[cfg(feature = "nvptx")]
            LlvmTarget::Nvptx => "llvm",
        }
    }

    /// Buffer access modes of a compiled artifact.
    pub fn buffer_io(repr: &PlironArtifact) -> Option<Vec<BufferIOAttr>> {
        match repr {
            PlironArtifact::Jit(never) => match *never {},
            #[cfg(feature = "nvptx")]
            PlironArtifact::NvptxCode(module) => Some(module.io.clone()),
        }
    }
}

#[cfg(feature = "nvptx")]
pub mod nvptx {
    pub mod ptx_version {
        //! The PTX ISA version for the installed driver: the real crate's table, so that
        //! cubecl-cuda's cache namespaces are unchanged.

        use core::fmt;

        /// A PTX ISA version as the NVPTX target feature spells it: 8.7 is `87`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(u32);

        impl PtxVersion {
            /// The newest version a driver of CUDA `driver` (12.8 is `12080`) loads.
            pub fn for_driver(driver: i32) -> Option<Self> {
                DRIVER_PTX
                    .iter()
                    .find(|(first_driver, _)| driver >= *first_driver)
                    .map(|(_, ptx)| Self(*ptx))
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }

        const DRIVER_PTX: &[(i32, u32)] = &[
            (13030, 93),
            (13020, 92),
            (13010, 91),
            (13000, 90),
            (12090, 88),
            (12080, 87),
            (12050, 85),
            (12040, 84),
            (12030, 83),
            (12020, 82),
            (12010, 81),
            (12000, 80),
            (11080, 78),
            (11070, 77),
            (11060, 76),
            (11050, 75),
            (11040, 74),
            (11030, 73),
            (11020, 72),
            (11010, 71),
            (11000, 70),
            (10020, 65),
            (10010, 64),
            (10000, 63),
        ];
    }
}

pub mod shared {
    pub mod lowered_features {
        //! Narrowing device properties to what the LLVM backend lowers. cubecl-cuda calls
        //! [`restrict_features`] only when the LLVM backend is selected, which the `cpp`
        //! feature rules out; with no LLVM backend there is nothing to narrow.

        use cubecl_core::ir::DeviceProperties;

        /// The GPU target a device's features are narrowed for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            #[cfg(feature = "nvptx")]
            Nvptx,
        }

        /// Leaves `props` unchanged (see the module docs).
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}
