//! Evaluation as in the papers: FID with the TF-2015 Inception network, precision/recall.

pub mod evaluate;
pub mod fid;
pub mod inception;
