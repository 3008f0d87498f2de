//! A plugin under test: its binary, its node namespace, its configuration, and timed
//! invocations of it as a runtime makes them (CNI_* environment, config on stdin).

use crate::ns::{NsHandle, ThreadNetns};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use twill_tests::Netns;

pub const IFNAME: &str = "eth0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Version,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
            Op::Version => "VERSION",
        }
    }
}

/// A pod: a fresh namespace, a container ID, and the result of its ADD (sent back as
/// `prevResult` on DEL, as libcni does).
pub struct Pod {
    ns: Netns,
    container_id: String,
    prev_result: Option<Value>,
}

impl Pod {
    pub fn new(subject: &str, phase: &str, i: usize) -> Pod {
        let short = &subject[..subject.len().min(3)];
        Pod {
            ns: Netns::new(&format!("{short}-{phase}{i}")),
            container_id: format!("bench-{subject}-{phase}-{i}"),
            prev_result: None,
        }
    }
}

pub struct Subject {
    pub name: &'static str,
    bin: PathBuf,
    cni_path: String,
    node_ns: NsHandle,
    /// The network configuration ADD gets; `cniVersion` is set by [`Subject::set_version`].
    conf: Value,
    version: String,
    // Last: the namespace goes after everything that refers to it.
    _node: Netns,
}

/// What one invocation took and printed.
pub struct Sample {
    /// From spawn to exit.
    pub wall: Duration,
    /// User + system CPU of the plugin and every process it waited for (host-local).
    pub cpu: Duration,
    pub value: Value,
}

/// A spawned invocation and what it was, for the error message.
struct Running {
    child: Child,
    what: String,
}

impl Subject {
    pub fn new(name: &'static str, bin: &Path, cni_path: &Path, conf: Value) -> Result<Self> {
        let node = Netns::new(&format!("{}-node", &name[..name.len().min(3)]));
        let node_ns = NsHandle::open(Path::new(&node.path()))?;
        Ok(Subject {
            name,
            bin: bin.to_path_buf(),
            cni_path: cni_path.display().to_string(),
            node_ns,
            conf,
            version: String::new(),
            _node: node,
        })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn set_version(&mut self, version: &str) {
        self.version = version.to_string();
        if let Some(map) = self.conf.as_object_mut() {
            map.insert("cniVersion".into(), Value::String(version.to_string()));
        }
    }

    /// The CNI versions the binary says it supports.
    pub fn supported_versions(&self, ns: &ThreadNetns) -> Result<Vec<String>> {
        let out = self.call(ns, Op::Version, None)?.value;
        let list = out
            .get("supportedVersions")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: VERSION gave no supportedVersions: {out}", self.name))?;
        Ok(list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect())
    }

    fn stdin(&self, op: Op, pod: Option<&Pod>) -> Result<Vec<u8>> {
        let v = match op {
            // What libcni sends for VERSION.
            Op::Version => serde_json::json!({ "cniVersion": self.version_or_default() }),
            Op::Add => self.conf.clone(),
            Op::Del => {
                let mut conf = self.conf.clone();
                if let (Some(map), Some(prev)) = (
                    conf.as_object_mut(),
                    pod.and_then(|p| p.prev_result.clone()),
                ) {
                    map.insert("prevResult".into(), prev);
                }
                conf
            }
        };
        Ok(serde_json::to_vec(&v)?)
    }

    fn version_or_default(&self) -> &str {
        if self.version.is_empty() {
            "1.0.0"
        } else {
            &self.version
        }
    }

    fn command(&self, op: Op, pod: Option<&Pod>) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", op.as_str())
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pod) = pod {
            cmd.env("CNI_CONTAINERID", &pod.container_id)
                .env("CNI_NETNS", pod.ns.path())
                .env("CNI_IFNAME", IFNAME);
        }
        cmd
    }

    fn describe(&self, op: Op, pod: Option<&Pod>) -> String {
        match pod {
            Some(p) => format!("{} {} of {}", self.name, op.as_str(), p.container_id),
            None => format!("{} {}", self.name, op.as_str()),
        }
    }

    /// One invocation, timed from spawn to exit; returns its stdout as JSON (`null` when
    /// empty, as after DEL). Fails when the plugin fails.
    pub fn call(&self, ns: &ThreadNetns, op: Op, pod: Option<&mut Pod>) -> Result<Sample> {
        let stdin = self.stdin(op, pod.as_deref())?;
        let mut cmd = self.command(op, pod.as_deref());
        let what = self.describe(op, pod.as_deref());
        ns.enter(&self.node_ns)?;
        let cpu_before = children_cpu()?;
        let start = Instant::now();
        let running = spawn(&mut cmd, &stdin, what)?;
        let (what, out) = wait(running)?;
        let wall = start.elapsed();
        let cpu = children_cpu()?.saturating_sub(cpu_before);
        let value = check(&what, op, &out)?;
        if let (Op::Add, Some(pod)) = (op, pod) {
            pod.prev_result = Some(value.clone());
        }
        Ok(Sample { wall, cpu, value })
    }

    /// `op` for all `pods` at once: every process is spawned before the first is waited
    /// for. Returns the wall time from the first spawn until the last exit.
    pub fn batch(&self, ns: &ThreadNetns, op: Op, pods: &mut [Pod]) -> Result<Duration> {
        let mut prepared = Vec::with_capacity(pods.len());
        for pod in pods.iter() {
            prepared.push((
                self.command(op, Some(pod)),
                self.stdin(op, Some(pod))?,
                self.describe(op, Some(pod)),
            ));
        }
        ns.enter(&self.node_ns)?;
        let start = Instant::now();
        let mut running = Vec::with_capacity(prepared.len());
        let mut spawn_err = None;
        for (cmd, stdin, what) in &mut prepared {
            match spawn(cmd, stdin, std::mem::take(what)) {
                Ok(r) => running.push(r),
                Err(e) => {
                    spawn_err = Some(e);
                    break;
                }
            }
        }
        // Wait for every started process, even after a failure: none may outlive the
        // namespaces it works in.
        let outputs: Vec<Result<(String, Output)>> = running.into_iter().map(wait).collect();
        let elapsed = start.elapsed();
        if let Some(e) = spawn_err {
            return Err(e);
        }
        for (pod, out) in pods.iter_mut().zip(outputs) {
            let (what, out) = out?;
            let value = check(&what, op, &out)?;
            if op == Op::Add {
                pod.prev_result = Some(value);
            }
        }
        Ok(elapsed)
    }
}

/// User + system CPU time of every child this process has waited for (and of their
/// waited-for descendants).
fn children_cpu() -> Result<Duration> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// Spawn-to-exit time of `bin` (e.g. /bin/true), started exactly as the plugins are:
/// the cost of starting any process here, to read the VERSION row against.
pub fn process_floor(bin: &Path) -> Result<Duration> {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let running = spawn(&mut cmd, b"{}", bin.display().to_string())?;
    let (what, out) = wait(running)?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!("{what} failed: {}", out.status);
    }
    Ok(wall)
}

fn spawn(cmd: &mut Command, stdin: &[u8], what: String) -> Result<Running> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if let Some(mut pipe) = child.stdin.take() {
        // The config is far smaller than a pipe buffer: this never blocks. A plugin that
        // exits without reading closes the pipe; its exit status tells what happened.
        let _ = pipe.write_all(stdin);
    }
    Ok(Running { child, what })
}

fn wait(r: Running) -> Result<(String, Output)> {
    let out = r
        .child
        .wait_with_output()
        .with_context(|| format!("{}: cannot wait for the plugin", r.what))?;
    Ok((r.what, out))
}

fn check(what: &str, op: Op, out: &Output) -> Result<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            stdout.trim(),
            stderr.trim()
        );
    }
    let text = stdout.trim();
    if text.is_empty() {
        if op == Op::Del {
            return Ok(Value::Null);
        }
        bail!(
            "{what} succeeded but printed nothing; stderr: {}",
            stderr.trim()
        );
    }
    let value: Value = serde_json::from_str(text).with_context(|| {
        format!(
            "{what}: stdout is not JSON: {text:?}; stderr: {}",
            stderr.trim()
        )
    })?;
    if op == Op::Add {
        let has_ip = matches!(value.get("ips").and_then(Value::as_array), Some(a) if !a.is_empty());
        if !has_ip {
            bail!("{what}: the result has no IP address: {text}");
        }
    }
    Ok(value)
}
