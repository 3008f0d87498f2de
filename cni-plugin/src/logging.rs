//! Logs go to the configured log file, else to stderr; never to stdout, which carries
//! only the result or the error.

use std::fs::OpenOptions;
use std::sync::Mutex;
use tracing::Level;
use twill_conf::PluginConf;

pub fn init(conf: &PluginConf) {
    let level = match conf.log_level.as_deref() {
        Some("error") => Level::ERROR,
        Some("warn") => Level::WARN,
        Some("debug") => Level::DEBUG,
        Some("trace") => Level::TRACE,
        Some(_) => Level::INFO,
        // A log file is for the operator: say what happened. stderr reaches the
        // runtime's log: only problems.
        None if conf.log_file.is_some() => Level::INFO,
        None => Level::WARN,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false);
    if let Some(path) = &conf.log_file {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => {
                let _ = builder.with_writer(Mutex::new(file)).try_init();
                return;
            }
            Err(e) => eprintln!("twill: cannot open log file {}: {e}", path.display()),
        }
    }
    let _ = builder.with_writer(std::io::stderr).try_init();
}
