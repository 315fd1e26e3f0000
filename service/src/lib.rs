//! The file-pipeline service: library half, shared with the xtask.

pub mod aws;
pub mod testing;
