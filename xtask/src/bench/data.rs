//! The benchmark's input: incompressible files and payloads, the same for every variant.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::MIB;
use super::small::Objects;

pub struct SourceFile {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Deterministic pseudo-random bytes (splitmix64): incompressible, and cheap to make.
fn fill_random(buffer: &mut [u8], state: &mut u64) {
    for chunk in buffer.chunks_mut(8) {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

pub fn generate_files(dir: &Path, label: &str, count: u32, size: u64) -> Result<Vec<SourceFile>> {
    eprintln!(
        "    writing {count} x {} MiB of random data to {}",
        size / MIB,
        dir.display()
    );
    let mut buffer = vec![0u8; MIB as usize];
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{label}-{i}.bin"));
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            let mut hasher = Sha256::new();
            let mut state = u64::from(i) << 32 | size;
            let mut left = size;
            while left > 0 {
                let n = left.min(MIB) as usize;
                fill_random(&mut buffer[..n], &mut state);
                hasher.update(&buffer[..n]);
                file.write_all(&buffer[..n])?;
                left -= n as u64;
            }
            file.flush()?;
            Ok(SourceFile {
                path,
                size,
                sha256: hex::encode(hasher.finalize()),
            })
        })
        .collect()
}

pub fn remove_files(files: &[SourceFile]) {
    for file in files {
        let _ = std::fs::remove_file(&file.path);
    }
}

pub fn generate_small(dir: &Path, count: u32, kib: u32) -> Result<Objects> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut state = 7;
    let payloads = (0..count)
        .map(|i| {
            let mut payload = vec![0u8; kib as usize * 1024];
            fill_random(&mut payload, &mut state);
            // Zero-padded names: boto3 reads them back sorted, in index order.
            let path = dir.join(format!("{i:08}"));
            std::fs::write(&path, &payload)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(Bytes::from(payload))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Objects {
        dir: dir.to_path_buf(),
        payloads,
    })
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; MIB as usize];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}
