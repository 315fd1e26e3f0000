//! Will a binary start on the host? Read from the ELF file itself: its machine, and the
//! newest glibc symbol version it needs (`.gnu.version_r`). Amazon Linux 2023 has glibc 2.34,
//! so a binary built on a newer distribution that needs, say, GLIBC_2.36 would fail there at
//! start-up with "version `GLIBC_2.36' not found".

use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};

/// The glibc of Amazon Linux 2023.
pub const AL2023_GLIBC: (u32, u32) = (2, 34);

const EM_X86_64: u16 = 62;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const PT_INTERP: u32 = 3;

/// What the binary needs from the system it runs on.
#[derive(Debug, PartialEq, Eq)]
pub struct Needs {
    pub x86_64: bool,
    /// Dynamically linked (has a program interpreter); false for a static (musl) build.
    pub dynamic: bool,
    /// The newest `GLIBC_x.y` symbol version required, if any.
    pub newest_glibc: Option<(u32, u32)>,
}

pub fn read(path: &Path) -> Result<Needs> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&data)
        .with_context(|| format!("{} is not a 64-bit little-endian ELF file", path.display()))
}

fn parse(data: &[u8]) -> Result<Needs> {
    ensure!(
        data.len() >= 64 && &data[..4] == b"\x7fELF",
        "no ELF header"
    );
    ensure!(data[4] == 2 && data[5] == 1, "not ELF64 little-endian");
    let u16_at = |at: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            data.get(at..at + 2).context("truncated")?.try_into()?,
        ))
    };
    let u32_at = |at: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            data.get(at..at + 4).context("truncated")?.try_into()?,
        ))
    };
    let u64_at = |at: usize| -> Result<usize> {
        Ok(u64::from_le_bytes(data.get(at..at + 8).context("truncated")?.try_into()?) as usize)
    };
    let machine = u16_at(18)?;
    let (phoff, shoff) = (u64_at(32)?, u64_at(40)?);
    let (phentsize, phnum) = (u16_at(54)? as usize, u16_at(56)? as usize);
    let (shentsize, shnum) = (u16_at(58)? as usize, u16_at(60)? as usize);

    let dynamic = (0..phnum).any(|i| u32_at(phoff + i * phentsize).ok() == Some(PT_INTERP));

    let mut newest: Option<(u32, u32)> = None;
    for i in 0..shnum {
        let header = shoff + i * shentsize;
        if u32_at(header + 4)? != SHT_GNU_VERNEED {
            continue;
        }
        let (offset, link) = (u64_at(header + 24)?, u32_at(header + 40)? as usize);
        let count = u32_at(header + 44)? as usize;
        let strings = u64_at(shoff + link * shentsize + 24)?;
        let name_at = |at: usize| -> Result<&str> {
            let start = strings + at;
            let len = data[start..]
                .iter()
                .position(|&b| b == 0)
                .context("unterminated name")?;
            Ok(std::str::from_utf8(&data[start..start + len])?)
        };
        // Elf64_Verneed: version, cnt, file, aux, next; Elf64_Vernaux: hash, flags, other,
        // name, next.
        let mut need = offset;
        for _ in 0..count {
            let aux_count = u16_at(need + 2)? as usize;
            let mut aux = need + u32_at(need + 8)? as usize;
            for _ in 0..aux_count {
                if let Some(version) = name_at(u32_at(aux + 8)? as usize)?
                    .strip_prefix("GLIBC_")
                    .and_then(parse_version)
                {
                    newest = newest.max(Some(version));
                }
                aux += u32_at(aux + 12)? as usize;
            }
            need += u32_at(need + 12)? as usize;
        }
    }
    Ok(Needs {
        x86_64: machine == EM_X86_64,
        dynamic,
        newest_glibc: newest,
    })
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    Some((major, minor))
}

/// Refuses, in one sentence, a binary that would not start on Amazon Linux 2023 x86_64.
pub fn check_runs_on_al2023(path: &Path) -> Result<()> {
    let needs = read(path)?;
    if !needs.x86_64 {
        bail!(
            "{} is not an x86_64 binary, and the instance (Amazon Linux 2023, x86_64) could not run it",
            path.display()
        );
    }
    if let Some(glibc) = needs.newest_glibc
        && glibc > AL2023_GLIBC
    {
        bail!(
            "{} needs glibc {}.{} (symbol version GLIBC_{}.{}), but Amazon Linux 2023 has {}.{}: build it on a distribution with glibc {}.{} or older, or install the x86_64-unknown-linux-musl target for a static build",
            path.display(),
            glibc.0,
            glibc.1,
            glibc.0,
            glibc.1,
            AL2023_GLIBC.0,
            AL2023_GLIBC.1,
            AL2023_GLIBC.0,
            AL2023_GLIBC.1
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_glibc_versions_a_system_binary_needs() {
        // Every glibc system has `ls`, dynamically linked and needing some GLIBC_2.x.
        let needs = read(Path::new("/bin/ls")).unwrap();
        assert!(needs.dynamic);
        let (major, minor) = needs.newest_glibc.expect("GLIBC_ versions");
        assert_eq!(major, 2);
        assert!(minor >= 2, "{minor}");
        assert_eq!(needs.x86_64, cfg!(target_arch = "x86_64"));
    }

    #[test]
    fn a_binary_needing_a_newer_glibc_is_refused_in_one_sentence() {
        let mut data = std::fs::read("/bin/ls").unwrap();
        // Rename every GLIBC_2.x the binary needs to GLIBC_9.x, as a newer glibc would.
        let mut at = 0;
        while let Some(found) = data[at..].windows(8).position(|w| w == b"GLIBC_2.") {
            data[at + found + 6] = b'9';
            at += found + 8;
        }
        let path = std::env::temp_dir().join(format!("elf-test-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let err = check_runs_on_al2023(&path).unwrap_err().to_string();
        assert!(
            err.contains("needs glibc 9.") && err.contains("Amazon Linux 2023 has 2.34"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        std::fs::remove_file(&path).unwrap();
        assert!(read(Path::new("/etc/hostname")).is_err(), "not an ELF file");
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("2.34"), Some((2, 34)));
        assert!(parse_version("2.4").unwrap() < parse_version("2.34").unwrap());
        assert_eq!(parse_version("2"), Some((2, 0)));
        assert_eq!(parse_version("x"), None);
    }
}
