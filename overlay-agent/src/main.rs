//! `twill-agent`: the node daemon. `run` (the default) keeps the VXLAN overlay equal to
//! the registry; `install-cni` puts the plugin and its conflist on the host; `uninstall`
//! removes everything the agent made; `status` prints the peer table.

mod command;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use command::logging::init_logging;
use command::uninstall::uninstall;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use twill_agent::agent::{self, AgentConf};
use twill_agent::firewall::policy::{render_delete_policy_table, PolicyRenderOptions};
use twill_agent::firewall::Nft;
use twill_agent::host::{HostPaths, CONFLIST_NAME};
use twill_agent::http;
use twill_agent::policy::deny_log::DenyLogArgs;
use twill_agent::policy::enforce::{self, PolicyMode};
use twill_agent::registry::{
    etcd::EtcdRegistry, file::FileRegistry, kubernetes::KubeRegistry, Registry,
};
use twill_agent::status::{AgentStatus, Board};
use twill_conf::{ClusterConf, RegistryConf};

#[derive(Parser)]
#[command(
    name = "twill-agent",
    version,
    about = "Twill node agent: a VXLAN pod network"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run(RunArgs),
    /// Copy the `twill` plugin into the CNI bin dir and write the conflist, atomically.
    InstallCni(InstallArgs),
    /// Remove the VXLAN device, routes, firewall rules, CNI files and this node's record.
    Uninstall(RunArgs),
    /// Print the peer table of the agent running on this node.
    Status(StatusArgs),
}

#[derive(Args, Clone)]
struct HostArgs {
    /// CNI config directory the conflist is written to.
    #[arg(long, env = "TWILL_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, env = "TWILL_CONFLIST_NAME", default_value = CONFLIST_NAME)]
    conflist_name: String,
    /// CNI plugin directory the `twill` binary goes to.
    #[arg(long, env = "TWILL_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The subnet file the plugin reads.
    #[arg(
        long,
        env = "TWILL_SUBNET_FILE",
        default_value = "/run/twill/subnet.json"
    )]
    subnet_file: PathBuf,
    /// The plugin's address store directory (`dataDir` in the conflist).
    #[arg(long, env = "TWILL_DATA_DIR", default_value = "/var/lib/twill")]
    data_dir: PathBuf,
    /// Where the agent serves the address store to the plugin (`storeSocket` in the
    /// conflist).
    #[arg(
        long,
        env = "TWILL_STORE_SOCKET",
        default_value = twill_conf::plugin::DEFAULT_STORE_SOCKET
    )]
    store_socket: PathBuf,
    /// The pod bridge the plugin creates.
    #[arg(long, env = "TWILL_BRIDGE", default_value = "twill0")]
    bridge: String,
    /// Enforce NetworkPolicy: `auto` is on with the kubernetes registry, else off
    /// (`install-cni` takes `auto` as off). On, the conflist sets `isolatePorts`.
    #[arg(long, env = "TWILL_NETWORK_POLICY", value_enum, default_value_t = PolicyMode::Auto)]
    network_policy: PolicyMode,
}

impl HostArgs {
    fn paths(&self, isolate_ports: bool) -> HostPaths {
        HostPaths {
            cni_conf_dir: self.cni_conf_dir.clone(),
            conflist_name: self.conflist_name.clone(),
            cni_bin_dir: self.cni_bin_dir.clone(),
            subnet_file: self.subnet_file.clone(),
            data_dir: self.data_dir.clone(),
            store_socket: self.store_socket.clone(),
            bridge: self.bridge.clone(),
            isolate_ports,
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The cluster network configuration (net-conf.json).
    #[arg(long, env = "TWILL_CONF", default_value = "/etc/twill/net-conf.json")]
    conf: PathBuf,
    /// This node's name (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Underlay interface (default: the interface of the default route).
    #[arg(long, env = "TWILL_IFACE")]
    iface: Option<String>,
    /// Tunnel endpoint address (default: the underlay interface's first address).
    #[arg(long, env = "TWILL_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// Address of /healthz, /readyz, /metrics and /status; "off" disables them.
    #[arg(long, env = "TWILL_LISTEN", default_value = "0.0.0.0:9473")]
    listen: String,
    /// Seconds between full resyncs against the kernel.
    #[arg(long, env = "TWILL_RESYNC", default_value_t = 30.0)]
    resync: f64,
    /// Log filter: error, warn, info, debug, trace.
    #[arg(long, env = "TWILL_LOG", default_value = "info")]
    log_level: String,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    host: HostArgs,
    #[command(flatten)]
    deny_log: DenyLogArgs,
}

#[derive(Args, Clone)]
struct KubeArgs {
    /// Kubeconfig for the kubernetes registry (default: the net-conf.json
    /// `registry.kubeconfig`, else the in-cluster service account).
    #[arg(long, env = "TWILL_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
struct InstallArgs {
    /// The plugin binary to install (default: `twill` next to this executable).
    #[arg(long)]
    plugin: Option<PathBuf>,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Args)]
struct StatusArgs {
    /// The agent's listen address.
    #[arg(long, env = "TWILL_LISTEN", default_value = "127.0.0.1:9473")]
    listen: String,
    /// Print the JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twill-agent: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            None => run(cli.run).await,
            Some(Command::Run(a)) => run(a).await,
            Some(Command::InstallCni(a)) => install_cni(a),
            Some(Command::Uninstall(a)) => uninstall(a).await,
            Some(Command::Status(a)) => status(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twill-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn node_name(a: &RunArgs) -> Result<String> {
    if let Some(n) = &a.node_name {
        return Ok(n.clone());
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name; set --node-name")?;
    Ok(h.trim().to_string())
}

fn listen_addr(s: &str) -> Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .with_context(|| format!("--listen {s:?} is not an address:port or \"off\""))
}

/// The registry, its name for status output, and its API client (kubernetes only).
type RegistryParts = (Arc<dyn Registry>, String, Option<kube::Client>);

async fn registry_for(
    cluster: &ClusterConf,
    node: &str,
    kube_args: &KubeArgs,
) -> Result<RegistryParts> {
    let nets = cluster.networks.clone();
    Ok(match &cluster.registry {
        RegistryConf::File { dir } => (
            Arc::new(FileRegistry::new(dir.clone(), nets)),
            format!("file {}", dir.display()),
            None,
        ),
        RegistryConf::Etcd {
            endpoints,
            prefix,
            lease_ttl_secs,
        } => (
            Arc::new(EtcdRegistry::connect(endpoints, prefix, *lease_ttl_secs, nets).await?),
            format!("etcd {}", endpoints.join(",")),
            None,
        ),
        RegistryConf::Kubernetes {
            kubeconfig,
            records,
        } => {
            let path = kube_args.kubeconfig.as_ref().or(kubeconfig.as_ref());
            let r = KubeRegistry::connect(path.map(|p| p.as_path()), node, nets, *records).await?;
            let name = format!("kubernetes {} ({})", r.server, records.as_str());
            let client = r.client();
            (Arc::new(r), name, Some(client))
        }
    })
}

async fn run(a: RunArgs) -> Result<std::process::ExitCode> {
    init_logging(&a.log_level);
    let cluster = ClusterConf::read(&a.conf).context("cluster network configuration")?;
    let node = node_name(&a)?;
    if a.resync.is_nan() || a.resync < 0.1 {
        bail!("--resync must be at least 0.1 seconds");
    }
    let resync = Duration::from_secs_f64(a.resync);
    let enforce_policy = a
        .host
        .network_policy
        .enabled(&cluster.registry)
        .map_err(anyhow::Error::msg)?;
    let deny_log = a.deny_log.settings().map_err(anyhow::Error::msg)?;
    // New pods are admitted through the store service only where policy is enforced.
    let (admit_hook, admits) = twill_agent::policy::admit::channel();
    let hook: Option<Arc<dyn twill_ipam::service::AdmissionHook>> =
        enforce_policy.then_some(admit_hook as _);
    let board = Arc::new(Board::new(resync * 3 + Duration::from_secs(30)));
    a.host.paths(enforce_policy).serve_address_store(
        hook,
        board.clone(),
        board.metrics.store_rebuilds.clone(),
    );
    if let Some(addr) = listen_addr(&a.listen)? {
        let listener = http::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tokio::spawn(http::serve(listener, board.clone()));
    }
    let (registry, registry_name, client) = loop {
        match registry_for(&cluster, &node, &a.kube).await {
            Ok(r) => break r,
            Err(e) if matches!(cluster.registry, RegistryConf::Etcd { .. }) => {
                tracing::warn!(error = %e, "registry unreachable; retrying");
                board.update(|s| {
                    s.set_overlay_reasons(vec![format!("registry unreachable: {e:#}")], false)
                });
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let (true, Some(client)) = (enforce_policy, client) {
        let conf = enforce::PolicyEnforcement {
            node: node.clone(),
            table: enforce::policy_table(Nft::new().table()),
            resync,
            render: PolicyRenderOptions {
                log_denied: deny_log,
            },
        };
        enforce::start(conf, client, board.clone(), admits);
    } else {
        // Off: a policy table an earlier run with enforcement on left behind would
        // still drop traffic nobody enforces any more.
        let table = enforce::policy_table(Nft::new().table());
        if let Err(e) = Nft::with_table(&table).run_script(&render_delete_policy_table(&table)) {
            tracing::warn!(table, error = %e, "cannot remove a NetworkPolicy table left behind");
        }
    }
    let conf = AgentConf {
        node,
        cluster,
        iface: a.iface.clone(),
        public_ip: a.public_ip,
        host: a.host.paths(enforce_policy),
        resync,
        registry_name,
    };
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
        tracing::info!("signal received");
    };
    agent::run(conf, registry, Box::new(Nft::new()), board, shutdown).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn install_cni(a: InstallArgs) -> Result<std::process::ExitCode> {
    let plugin = match a.plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name("twill"),
    };
    // `auto` needs the cluster configuration, which install-cni does not read: off.
    let paths = a.host.paths(a.host.network_policy == PolicyMode::On);
    paths
        .install_plugin(&plugin)
        .context("installing the plugin")?;
    paths.write_conflist().context("writing the conflist")?;
    println!(
        "installed {} and {}",
        paths.plugin_path().display(),
        paths.conflist_path().display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

async fn status(a: StatusArgs) -> Result<std::process::ExitCode> {
    let mut addr: SocketAddr = a
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an address:port", a.listen))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    let (code, body) = http::get(addr, "/status")
        .await
        .with_context(|| format!("asking the agent at {addr} (is it running on this node?)"))?;
    if code != 200 {
        bail!("the agent answered {code}: {body}");
    }
    if a.json {
        println!("{body}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let s: AgentStatus = serde_json::from_str(&body).context("decoding the agent's status")?;
    print!("{}", s.render());
    Ok(if s.ready {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    })
}
