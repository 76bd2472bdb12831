//! Where the tests find their reference fixtures.

use std::path::PathBuf;

/// The fixtures folder: `$DDPM_FIXTURES` (what scripts/make-fixtures.sh writes), else the
/// project's `../shared/data`.
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("DDPM_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    }
}

/// `ROOT/sub`, or None with a printed reason when it is absent.
#[allow(dead_code)]
pub fn fixture(sub: &str) -> Option<PathBuf> {
    let p = fixtures_root().join(sub);
    if p.exists() {
        Some(p)
    } else {
        println!(
            "SKIP: {} is absent (scripts/make-fixtures.sh OUT writes it; then set DDPM_FIXTURES=OUT)",
            p.display()
        );
        None
    }
}
