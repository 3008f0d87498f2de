//! The agent's logs: to stderr, Twill's own at the chosen level, libraries quieter.

pub fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .finish()
        .with(log_targets(level))
        .init();
}

/// Twill's own logs at `level`; libraries at warn at most, unless debugging. The
/// Kubernetes client's transport (one ERROR line per failed reconnect, "eof in poll")
/// stays quiet: the watches say once that they lost the API server and once, with the
/// outage's length, that they are back.
fn log_targets(level: tracing::Level) -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    use tracing::Level;
    let libraries = if level >= Level::DEBUG {
        LevelFilter::from_level(level)
    } else {
        LevelFilter::from_level(level.min(Level::WARN))
    };
    let kube_transport = if level >= Level::DEBUG {
        libraries
    } else {
        LevelFilter::OFF
    };
    tracing_subscriber::filter::Targets::new()
        .with_default(libraries)
        // A prefix: twill_agent, twill_policy, twill_ipam, twill_netlink, ...
        .with_target("twill", level)
        .with_target("kube_client::client", kube_transport)
}
