//! `twill`: the CNI plugin a container runtime runs for every pod.
//!
//! stdin: the network configuration; environment: CNI_*; stdout: the result or the
//! error JSON, nothing else.

mod add;
mod admit;
mod bridge;
mod check;
mod cni;
mod del;
mod gc;
mod logging;
mod netns;
mod node;
mod pod_ports;
mod pod_routes;
mod repair;
mod status;
mod store;

use cni::error::{INCOMPATIBLE_VERSION, INTERNAL, IO_FAILURE};
use cni::{CniError, CniVersion, Command, Env};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::ExitCode;
use twill_conf::PluginConf;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = match Env::command(&|k| std::env::var(k).ok()) {
        Err(e) => Err(e),
        Ok(command) => match std::io::stdin().read_to_end(&mut stdin) {
            Err(e) => Err(CniError::new(
                IO_FAILURE,
                format!("cannot read the network configuration from stdin: {e}"),
            )),
            Ok(_) if command == Command::Version => Ok(Some(version_info(&stdin))),
            Ok(_) => dispatch(&stdin),
        },
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            let _ = writeln!(out, "{}", e.to_json(&error_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let env = Env::from_vars(|k| std::env::var(k).ok())?;
    let conf = PluginConf::parse(stdin)?;
    let version = CniVersion::parse(&conf.cni_version)?;
    for v in &conf.cni_versions {
        CniVersion::parse(v)
            .map_err(|e| CniError::new(e.code, format!("cniVersions: {}", e.msg)))?;
    }
    logging::init(&conf);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| CniError::new(INTERNAL, format!("cannot start the I/O runtime: {e}")))?;
    match env.command {
        Command::Add => add::run(&env, &conf, version, &rt).map(Some),
        Command::Del => del::run(&env, &conf, &rt).map(|()| None),
        Command::Check => {
            require(version.has_check(), version, "CHECK")?;
            rt.block_on(check::run(&env, &conf)).map(|()| None)
        }
        Command::Gc => {
            require(version.has_gc_and_status(), version, "GC")?;
            rt.block_on(gc::run(&conf)).map(|()| None)
        }
        Command::Status => {
            require(version.has_gc_and_status(), version, "STATUS")?;
            status::run(&conf).map(|()| None)
        }
        Command::Version => Ok(Some(version_info(stdin))),
    }
}

fn require(ok: bool, version: CniVersion, command: &str) -> Result<(), CniError> {
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            INCOMPATIBLE_VERSION,
            format!("config version {version} does not allow {command}"),
        ))
    }
}

/// VERSION answers without touching the kernel or the store.
fn version_info(stdin: &[u8]) -> Value {
    let requested = requested_version(stdin)
        .filter(|v| CniVersion::parse(v).is_ok())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string());
    json!({
        "cniVersion": requested,
        "supportedVersions": cni::version::SUPPORTED.map(|v| v.as_str()),
    })
}

fn requested_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// An error is reported in the version the runtime asked for, when it asked for one.
fn error_version(stdin: &[u8]) -> String {
    requested_version(stdin)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string())
}
