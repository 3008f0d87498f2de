//! The files the agent puts on the host for the container runtime and the plugin: the
//! subnet file, the CNI conflist and the `twill` binary. Every write is atomic (temp
//! file + rename), so a runtime never reads half a conflist and never hits "text file
//! busy" on the binary.

use crate::pod_ports::BridgePorts;
use prometheus_client::metrics::counter::Counter;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use twill_conf::SubnetFile;
use twill_ipam::service::AdmissionHook;

pub const CONFLIST_NAME: &str = "10-twill.conflist";
pub const NETWORK_NAME: &str = "twill";
pub const PLUGIN_BINARY: &str = "twill";

/// Where the host files go; every path is configurable because simulated nodes share
/// one filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    pub cni_conf_dir: PathBuf,
    pub conflist_name: String,
    pub cni_bin_dir: PathBuf,
    pub subnet_file: PathBuf,
    /// The plugin's address store (`dataDir` in the conflist).
    pub data_dir: PathBuf,
    /// Where the agent serves that store to the plugin (`storeSocket`).
    pub store_socket: PathBuf,
    pub bridge: String,
    /// `isolatePorts` and `networkPolicy` in the conflist: same-node pod traffic is
    /// routed through the node's forward hook, where NetworkPolicy is enforced, and ADD
    /// waits until a new pod's rules are in force.
    pub isolate_ports: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct HostError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |source| HostError {
        path: path.to_path_buf(),
        source,
    }
}

impl HostPaths {
    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.conflist_name)
    }

    /// The store directory of the network in the conflist (`dataDir`/`name`).
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(NETWORK_NAME)
    }

    pub fn plugin_path(&self) -> PathBuf {
        self.cni_bin_dir.join(PLUGIN_BINARY)
    }

    /// The conflist runtimes read: one `twill` entry that takes its subnet from the
    /// subnet file, so the conflist never changes when the node's subnet does.
    pub fn conflist(&self) -> Value {
        let mut list = json!({
            "cniVersion": "1.0.0",
            "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
            "name": NETWORK_NAME,
            "plugins": [{
                "type": "twill",
                "subnetFile": self.subnet_file,
                "dataDir": self.data_dir,
                "storeSocket": self.store_socket,
                "bridge": self.bridge,
                "hairpinMode": true,
            }],
        });
        // Only when on, so that without NetworkPolicy the conflist stays as it was.
        if self.isolate_ports {
            list["plugins"][0]["isolatePorts"] = Value::Bool(true);
            list["plugins"][0]["networkPolicy"] = Value::Bool(true);
        }
        list
    }

    /// Writes the conflist; returns whether it changed.
    pub fn write_conflist(&self) -> Result<bool, HostError> {
        let path = self.conflist_path();
        let mut body = serde_json::to_vec_pretty(&self.conflist()).map_err(|e| HostError {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        body.push(b'\n');
        twill_conf::atomic::write_if_changed(&path, &body, 0o644).map_err(at(&path))
    }

    /// Writes the subnet file; returns whether it changed.
    pub fn write_subnet_file(&self, file: &SubnetFile) -> Result<bool, HostError> {
        file.write_atomic(&self.subnet_file)
            .map_err(at(&self.subnet_file))
    }

    /// True when both files hold what the agent would write.
    pub fn files_current(&self, file: &SubnetFile) -> bool {
        SubnetFile::read(&self.subnet_file).ok().as_ref() == Some(file)
            && std::fs::read(self.conflist_path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                == Some(self.conflist())
    }

    /// Copies the plugin binary into the bin dir: temp file in the same directory, then
    /// rename, so a runtime executing the old binary is never disturbed.
    pub fn install_plugin(&self, source: &Path) -> Result<(), HostError> {
        let bytes = std::fs::read(source).map_err(at(source))?;
        let dest = self.plugin_path();
        twill_conf::atomic::write_if_changed(&dest, &bytes, 0o755).map_err(at(&dest))?;
        Ok(())
    }

    /// Holds the plugin's address store open and serves it on the store socket, so a
    /// plugin call does not pay for opening sled. On its own thread: opening waits for
    /// plugin processes that hold the store. Without it the plugin opens the store itself.
    /// `admission`: where NetworkPolicy is enforced, what admits new pods.
    /// `health`: what `Verify` (the plugin's STATUS) asks about the node first.
    /// A store found missing, unreadable or inconsistent is moved aside and rebuilt from
    /// the host veths on the bridge first, counted in `rebuilds`; host veths of older
    /// plugins then get their pods' addresses in their aliases.
    pub fn serve_address_store(
        &self,
        admission: Option<Arc<dyn AdmissionHook>>,
        health: Arc<dyn twill_ipam::service::NodeHealth>,
        rebuilds: Counter,
    ) {
        let (dir, socket) = (self.store_dir(), self.store_socket.clone());
        let shown = socket.display().to_string();
        let ports = BridgePorts {
            bridge: self.bridge.clone(),
        };
        let start = move || {
            let (service, rebuilt) =
                twill_ipam::StoreService::start_rebuilding(&dir, &socket, &ports)?;
            if rebuilt.is_some() {
                rebuilds.inc();
            }
            // Best effort: without it those pods are only as safe as before.
            let completed = service
                .reservations()
                .map_err(|e| e.to_string())
                .and_then(|held| ports.complete_aliases(&held));
            if let Err(e) = completed {
                tracing::warn!(error = %e, "cannot record the pods' addresses in older host veth aliases");
            }
            Ok::<_, twill_ipam::StoreError>(service)
        };
        let spawned = std::thread::Builder::new()
            .name("store-service".into())
            .spawn(move || match start() {
                Ok(service) => {
                    let service = service.with_health(health);
                    let service = match admission {
                        Some(hook) => service.with_admission(hook),
                        None => service,
                    };
                    let e = service.serve();
                    tracing::error!(error = %e, socket = %shown, "address store service stopped; the plugin opens the store itself");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve the address store; the plugin opens it itself")
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the address store service");
        }
    }

    /// Removes what the agent wrote; missing files are fine.
    pub fn remove_all(&self) -> Result<Vec<PathBuf>, HostError> {
        let mut removed = Vec::new();
        // The store socket outlives a stopped agent (nothing unlinks a bound socket).
        for p in [
            self.conflist_path(),
            self.subnet_file.clone(),
            self.plugin_path(),
            self.store_socket.clone(),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => removed.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(&p)(e)),
            }
        }
        Ok(removed)
    }
}

/// Deletes the pod bridge `name` if no interface is attached to it: with no pod left on
/// the node nothing uses it, while a pod still running keeps its network. `Ok(false)` when
/// it is absent or in use.
pub async fn remove_idle_bridge(
    nl: &twill_netlink::Netlink,
    name: &str,
) -> Result<bool, twill_netlink::NetlinkError> {
    let links = nl.links().await?;
    let Some(bridge) = links.iter().find(|l| l.name == name) else {
        return Ok(false);
    };
    if links.iter().any(|l| l.master == Some(bridge.index)) {
        return Ok(false);
    }
    nl.delete_link(bridge.index).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_conf::PluginConf;

    fn paths(dir: &Path) -> HostPaths {
        HostPaths {
            cni_conf_dir: dir.join("net.d"),
            conflist_name: CONFLIST_NAME.into(),
            cni_bin_dir: dir.join("bin"),
            subnet_file: dir.join("run/subnet.json"),
            data_dir: dir.join("data"),
            store_socket: dir.join("run/store.sock"),
            bridge: "tw0".into(),
            isolate_ports: false,
        }
    }

    #[test]
    fn conflist_entry_is_a_valid_plugin_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let list = p.conflist();
        let mut entry = list["plugins"][0].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        entry["name"] = list["name"].clone();
        let conf = PluginConf::parse(entry.to_string().as_bytes()).unwrap();
        assert_eq!(conf.bridge, "tw0");
        assert_eq!(conf.subnet_file, p.subnet_file);
        assert!(!conf.isolate_ports);
        assert!(list["plugins"][0].get("isolatePorts").is_none());
        let list = HostPaths {
            isolate_ports: true,
            ..p
        }
        .conflist();
        let mut entry = list["plugins"][0].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        entry["name"] = list["name"].clone();
        let conf = PluginConf::parse(entry.to_string().as_bytes()).unwrap();
        assert!(conf.isolate_ports);
        assert!(conf.network_policy);
    }

    #[test]
    fn files_are_written_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let sf = SubnetFile {
            networks: vec!["10.244.0.0/16".parse().unwrap()],
            subnets: vec!["10.244.3.0/24".parse().unwrap()],
            mtu: Some(1450),
            ip_masq: true,
        };
        assert!(!p.files_current(&sf));
        assert!(p.write_subnet_file(&sf).unwrap());
        assert!(p.write_conflist().unwrap());
        assert!(
            !p.write_conflist().unwrap(),
            "unchanged content is not rewritten"
        );
        assert!(p.files_current(&sf));
        let src = dir.path().join("twill-src");
        std::fs::write(&src, b"#!/bin/true\n").unwrap();
        p.install_plugin(&src).unwrap();
        assert_eq!(std::fs::read(p.plugin_path()).unwrap(), b"#!/bin/true\n");
        let _store = std::os::unix::net::UnixListener::bind(&p.store_socket).unwrap();
        assert_eq!(p.remove_all().unwrap().len(), 4);
        assert!(!p.store_socket.exists(), "the store socket is removed");
        assert!(p.remove_all().unwrap().is_empty());
    }
}
