//! The benchmarks' command lines: `--flag N` options over defaults.

use anyhow::{bail, Context, Result};

/// Reads `--flag N` pairs from the process's arguments into `flags` (name, value,
/// holding its default); an unknown flag or a value that is not a number is an error
/// carrying `usage`.
pub fn usize_flags(usage: &str, flags: &mut [(&str, &mut usize)]) -> Result<()> {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let Some((_, slot)) = flags.iter_mut().find(|(name, _)| *name == flag) else {
            bail!("unknown option {flag}\n{usage}");
        };
        **slot = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag}: not a number"))?;
    }
    Ok(())
}
