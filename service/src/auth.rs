//! The bearer token every `/v1` route and `/metrics` require. Read from `AUTH_TOKEN_FILE`
//! (or fixed by `AUTH_TOKEN`) and read again on SIGHUP and every `RELOAD_INTERVAL_SECS`: a
//! new token is accepted at once, and the one it replaced for `AUTH_TOKEN_OVERLAP_SECS`
//! more, so clients switch over without a failed request. Compared in constant time
//! (`subtle`); never logged.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use subtle::ConstantTimeEq;

/// Shorter tokens are refused: a token is the only thing between the internet and the buckets.
pub const MIN_TOKEN_LEN: usize = 16;

pub struct Tokens {
    file: Option<PathBuf>,
    overlap: Duration,
    state: RwLock<State>,
}

struct State {
    current: Vec<u8>,
    /// The token the current one replaced, and until when it is still accepted.
    previous: Option<(Vec<u8>, Instant)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("file", &self.file)
            .field("overlap", &self.overlap)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// From the file (re-read later) or a fixed value; `None` when neither is configured.
    pub fn load(
        file: Option<PathBuf>,
        fixed: Option<&str>,
        overlap: Duration,
    ) -> Result<Option<Tokens>> {
        let current = match (&file, fixed) {
            (Some(path), _) => read(path)?,
            (None, Some(token)) => checked(token.trim())?,
            (None, None) => return Ok(None),
        };
        Ok(Some(Tokens {
            file,
            overlap,
            state: RwLock::new(State {
                current,
                previous: None,
            }),
        }))
    }

    /// Whether `presented` is the current token, or the previous one within its overlap.
    /// Both are compared every time, so timing tells nothing either.
    pub fn accepts(&self, presented: &str) -> bool {
        let state = self.state.read().expect("token lock");
        let current = bool::from(presented.as_bytes().ct_eq(&state.current));
        let previous = state.previous.as_ref().is_some_and(|(token, until)| {
            bool::from(presented.as_bytes().ct_eq(token)) & (Instant::now() < *until)
        });
        current | previous
    }

    /// Reads the file again; returns whether the token changed. A file that cannot be read
    /// or holds too short a token keeps the current token (and is reported).
    pub fn reload(&self) -> Result<bool> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let fresh = read(path)?;
        let mut state = self.state.write().expect("token lock");
        if bool::from(fresh.ct_eq(&state.current)) {
            return Ok(false);
        }
        let replaced = std::mem::replace(&mut state.current, fresh);
        state.previous = Some((replaced, Instant::now() + self.overlap));
        Ok(true)
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading AUTH_TOKEN_FILE {}", path.display()))?;
    checked(text.trim()).with_context(|| format!("in AUTH_TOKEN_FILE {}", path.display()))
}

fn checked(token: &str) -> Result<Vec<u8>> {
    if token.len() < MIN_TOKEN_LEN {
        bail!("the bearer token must be at least {MIN_TOKEN_LEN} characters");
    }
    Ok(token.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "tokens-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_replaced_token_is_accepted_for_the_overlap_only() {
        let path = file("first-token-0123456789\n");
        let tokens = Tokens::load(Some(path.clone()), None, Duration::from_millis(300))
            .unwrap()
            .unwrap();
        assert!(tokens.accepts("first-token-0123456789"));
        assert!(!tokens.accepts("first-token-012345678"));
        assert!(!tokens.accepts(""));
        assert!(!tokens.reload().unwrap(), "unchanged");

        std::fs::write(&path, "second-token-0123456789").unwrap();
        assert!(tokens.reload().unwrap());
        assert!(tokens.accepts("second-token-0123456789"));
        assert!(
            tokens.accepts("first-token-0123456789"),
            "within the overlap"
        );
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !tokens.accepts("first-token-0123456789"),
            "after the overlap"
        );
        assert!(tokens.accepts("second-token-0123456789"));

        // A broken file keeps the token that works.
        std::fs::write(&path, "short").unwrap();
        assert!(tokens.reload().is_err());
        assert!(tokens.accepts("second-token-0123456789"));
        std::fs::remove_file(&path).unwrap();
        assert!(tokens.reload().is_err());
        assert!(tokens.accepts("second-token-0123456789"));
    }

    #[test]
    fn short_tokens_are_refused_and_a_fixed_token_never_changes() {
        let err = Tokens::load(None, Some("too-short"), Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        let fixed = Tokens::load(None, Some("fixed-token-0123456789"), Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(!fixed.reload().unwrap());
        assert!(fixed.accepts("fixed-token-0123456789"));
        assert!(Tokens::load(None, None, Duration::ZERO).unwrap().is_none());
        assert!(
            !format!("{fixed:?}").contains("fixed-token"),
            "never in Debug"
        );
    }
}
