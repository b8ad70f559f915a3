//! The machine's tools the xtask needs beyond cargo: whether a program runs, and
//! installing Debian packages with apt-get when it does not.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Whether `program --version` runs.
pub fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `apt-get update`, then `apt-get install` of `packages`; the error says which step
/// failed and apt's last line.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !has("apt-get") {
        bail!("{} missing and there is no apt-get", packages.join(", "));
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    let quiet = |args: &[&str]| -> Result<()> {
        let output = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot start apt-get")?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!(
                "`apt-get {}` failed: {}",
                args.join(" "),
                stderr.lines().last().unwrap_or("no message")
            );
        }
        Ok(())
    };
    quiet(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(packages.iter().copied());
    quiet(&install)
}
