//! Background processes the xtask starts (the emulator, the local service) and must stop
//! again: only ever the recorded pid, and only while it still runs the expected program.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// True if `pid` is alive and its command line contains `program`: a recycled pid is never
/// taken for ours.
pub fn runs(pid: u32, program: &str) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(out) = Command::new("ps")
        .args(["-o", "command=", "-p", &pid.to_string()])
        .output()
    else {
        return false;
    };
    let command = String::from_utf8_lossy(&out.stdout);
    // A zombie (exited, not yet reaped by its parent) is listed as `[name] <defunct>`.
    out.status.success() && command.contains(program) && !command.contains("<defunct>")
}

/// SIGTERM, then SIGKILL after ten seconds.
pub fn terminate(pid: u32, program: &str) -> Result<()> {
    signal(pid, program, "TERM")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs(pid, program) {
        if Instant::now() > deadline {
            signal(pid, program, "KILL")?;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Sends SIG`name` to `pid` if it still runs `program`.
pub fn signal(pid: u32, program: &str, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .context("running kill")?;
    // A process that exited in between is what we wanted anyway.
    if !status.success() && runs(pid, program) {
        bail!("could not send SIG{name} to {program} (pid {pid})");
    }
    Ok(())
}
