//! What Prometheus's own linter says of an agent's `/metrics`: `promtool check metrics`
//! from Debian's `prometheus` package.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// The body of an HTTP/1.0 response as `Node::http_get` returns it.
pub fn http_body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map_or(response, |(_, body)| body)
}

/// `Ok` when promtool parses `exposition` and finds no lint problem; else what it said.
pub fn check_metrics(exposition: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool (Debian package prometheus): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .map_err(|e| format!("writing to promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for promtool: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "promtool check metrics exited {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
