//! Telling processes apart: an exec-proof identity for a process (boot id + start time), so a
//! successor can know whether a recorded pid is still the process that was recorded, and the
//! outcome a finished try left beside its log.

use super::{BashOutcome, Exit};
use std::path::{Path, PathBuf};

/// `"{boot_id}:{start_time}"` of a live process: stays the same across `exec`, differs for a
/// reused pid or after a reboot. `None` when the process is gone.
pub fn process_token(pid: u32) -> Option<String> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (start time); the command name in field 2 may hold spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // A zombie has ended: it only waits to be reaped (late, by PID 1, for an orphan).
    if after_name.split_whitespace().next()? == "Z" {
        return None;
    }
    let start_time = after_name.split_whitespace().nth(19)?;
    Some(format!("{}:{start_time}", boot_id.trim()))
}

/// Whether `pid` is still the process whose token was recorded. Without a token, whether a
/// process with that pid lives at all.
pub fn is_same_process(pid: u32, token: Option<&str>) -> bool {
    if pid <= 1 {
        return false;
    }
    match token {
        Some(token) => process_token(pid).is_some_and(|t| t == token),
        None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok(),
    }
}

/// Where a finished try's outcome is recorded: beside its log, `attempt=N.status`.
pub fn status_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("status")
}

/// The outcome recorded beside a try's log, if the try finished (`{"exit_code": 0, "last_line": …}`
/// or `{"signal": 9}`).
pub fn read_status(log_path: &Path) -> Option<BashOutcome> {
    let text = std::fs::read_to_string(status_path(log_path)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let exit = match (v.get("exit_code").and_then(|c| c.as_i64()), v.get("signal").and_then(|s| s.as_i64())) {
        (Some(code), _) => Exit::Code(i32::try_from(code).ok()?),
        (None, Some(sig)) => Exit::Signal(i32::try_from(sig).ok()?),
        _ => return None,
    };
    let last_line = v.get("last_line").and_then(|l| l.as_str()).map(str::to_owned);
    Some(BashOutcome { exit, last_line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_one_process() {
        let me = std::process::id();
        let token = process_token(me).expect("this process has a token");
        assert!(is_same_process(me, Some(&token)));
        assert!(!is_same_process(me, Some("other-boot:1")));
        assert!(is_same_process(me, None));
    }
}
