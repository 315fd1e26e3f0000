//! The emulator's control API (`/moto-api`, over its plain-HTTP port) and its log: a minimal
//! HTTP/1.1 exchange on 127.0.0.1, usable inside or outside an async runtime.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// The dashboard page is static: unlike `/moto-api/data.json`, which serialises every
/// stored object, it stays cheap however much the emulator holds.
pub(super) fn answers(port: u16) -> bool {
    matches!(http_status(port, "GET", "/moto-api/"), Ok(200))
}

/// A minimal HTTP/1.1 exchange on 127.0.0.1: all the emulator's control API and readiness
/// checks need, and usable inside or outside an async runtime.
pub fn http_status(port: u16, method: &str, path: &str) -> Result<u16> {
    request(port, method, path, "")
}

pub(super) fn post(port: u16, path: &str, body: &str) -> Result<u16> {
    request(port, "POST", path, body).with_context(|| format!("POST {path} to the emulator"))
}

fn request(port: u16, method: &str, path: &str, body: &str) -> Result<u16> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
