//! Calls the `twill` binary as a runtime does: CNI_* environment, config on stdin, inside
//! the node's namespace, result or error JSON on stdout.

use crate::netns::Netns;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The plugin binary and the node namespace it runs in.
#[derive(Clone)]
pub struct Plugin {
    pub bin: PathBuf,
    pub node: String,
}

/// One invocation.
#[derive(Clone, Debug, Default)]
pub struct CniCall {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    /// Extra or overriding environment variables (a `None` value removes one).
    pub env: Vec<(String, Option<String>)>,
    pub stdin: Vec<u8>,
}

impl CniCall {
    pub fn new(command: &str, config: &Value) -> Self {
        CniCall {
            command: command.to_string(),
            stdin: config.to_string().into_bytes(),
            ..Default::default()
        }
    }

    /// Sets (or, with `None`, removes) one environment variable of the call.
    pub fn env(mut self, key: &str, value: Option<&str>) -> Self {
        self.env.push((key.to_string(), value.map(str::to_string)));
        self
    }

    /// Raw bytes on stdin instead of the config given to [`CniCall::new`].
    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = bytes.to_vec();
        self
    }

    pub fn container(mut self, id: &str, netns: &str, ifname: &str) -> Self {
        self.container_id = Some(id.to_string());
        self.netns = Some(netns.to_string());
        self.ifname = Some(ifname.to_string());
        self
    }
}

#[derive(Debug)]
pub struct CniOutcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutcome {
    /// The outcome of a plugin process the caller started with [`Plugin::spawn`].
    pub fn from_output(out: std::process::Output) -> Self {
        CniOutcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as JSON; panics (showing stdout and stderr) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code of a failed call.
    pub fn error_code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }

    /// The result of a successful ADD; panics with the error otherwise.
    pub fn result(&self) -> Value {
        assert!(
            self.success(),
            "plugin failed ({:?}): {} {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self.json()
    }
}

impl Plugin {
    pub fn new(node: &Netns) -> Self {
        Plugin {
            bin: crate::workspace_bin("twill"),
            node: node.name().to_string(),
        }
    }

    /// Starts the plugin; the caller waits (or kills it).
    pub fn spawn(&self, call: &CniCall) -> Child {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .arg(&self.bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", &call.command)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in [
            ("CNI_CONTAINERID", &call.container_id),
            ("CNI_NETNS", &call.netns),
            ("CNI_IFNAME", &call.ifname),
            ("CNI_ARGS", &call.args),
        ] {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        for (k, v) in &call.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd.spawn().expect("cannot start the plugin");
        if let Some(mut stdin) = child.stdin.take() {
            // A killed child closes the pipe early: that is not the test's failure.
            let _ = stdin.write_all(&call.stdin);
        }
        child
    }

    pub fn call(&self, call: &CniCall) -> CniOutcome {
        let out = self
            .spawn(call)
            .wait_with_output()
            .expect("cannot wait for the plugin");
        CniOutcome::from_output(out)
    }
}
