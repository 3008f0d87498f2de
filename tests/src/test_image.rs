//! A container image of the binaries under test, for a cluster that cannot pull and has
//! no Docker: a docker-archive (`docker save` layout: one uncompressed layer, a config,
//! a manifest; as `mkimage` in `tests/k8s-node/build-node.sh`) that `ctr images import`
//! reads. It holds what the production image (the Dockerfile) gives the agent at run
//! time: `twill-agent` and `twill` in /usr/local/bin, `nft`, and the shared libraries
//! of both with glibc's loader, copied from this machine.

use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes the image `tag` to `out`, with `bins` (name in /usr/local/bin, source) and
/// `nft` from this machine; `work` is an empty scratch directory.
pub fn build(tag: &str, bins: &[(&str, &Path)], work: &Path, out: &Path) -> Result<(), String> {
    let rootfs = work.join("rootfs");
    let nft = which("nft")?;
    let mut libs = BTreeSet::new();
    for (name, src) in bins {
        copy_into(
            &rootfs,
            src,
            Path::new("/usr/local/bin").join(name).as_path(),
        )?;
        libs.extend(shared_libraries(src)?);
    }
    copy_into(&rootfs, &nft, &nft)?;
    libs.extend(shared_libraries(&nft)?);
    for lib in &libs {
        copy_into(&rootfs, lib, lib)?;
    }
    for dir in ["tmp", "etc", "proc", "sys", "dev", "run"] {
        mkdir(&rootfs.join(dir))?;
    }

    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
        ])
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let diff_id = sha256(&std::fs::read(&layer).map_err(|e| format!("{}: {e}", layer.display()))?)?;
    let image = work.join("image");
    mkdir(&image.join(&diff_id))?;
    rename(&layer, &image.join(&diff_id).join("layer.tar"))?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": [PATH_ENV], "Entrypoint": ["/usr/local/bin/twill-agent"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    })
    .to_string();
    let config_id = sha256(config.as_bytes())?;
    write(&image.join(format!("{config_id}.json")), config.as_bytes())?;
    let manifest = json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{diff_id}/layer.tar")],
    }]);
    write(
        &image.join("manifest.json"),
        manifest.to_string().as_bytes(),
    )?;
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"])
        .arg("-C")
        .arg(&image)
        .arg("-cf")
        .arg(out)
        .args(["manifest.json", &format!("{config_id}.json"), &diff_id]))
}

/// The libraries `ldd` resolves for `bin`, the loader included, as absolute paths.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // A static binary: "not a dynamic executable" (exit status 1), nothing to copy.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn which(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("`{name}` is not installed (Debian: nftables)"))
}

/// Copies `src` (following symlinks) to `dest` (absolute, inside the image) under `rootfs`.
fn copy_into(rootfs: &Path, src: &Path, dest: &Path) -> Result<(), String> {
    let target = rootfs.join(dest.strip_prefix("/").unwrap_or(dest));
    if let Some(dir) = target.parent() {
        mkdir(dir)?;
    }
    std::fs::copy(src, &target)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", src.display(), target.display()))
}

fn sha256(data: &[u8]) -> Result<String, String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(data)
            .map_err(|e| format!("sha256sum: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "sha256sum printed nothing".into())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn mkdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to).map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))
}
