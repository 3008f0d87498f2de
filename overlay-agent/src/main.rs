//! `twill-agent`: the node daemon (VXLAN overlay, subnet file, CNI config). Its
//! implementation is tracked in its own issue; this binary only reports its version.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("version") => {
            println!("twill-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("twill-agent: the node agent is not implemented yet; only `--version` works");
            ExitCode::from(2)
        }
    }
}
