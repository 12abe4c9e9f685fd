//! `ferry config check`: the effective configuration, what its empty
//! values stand for on this machine, which secrets are set, and whether
//! each destination could take a bundle now.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ferry::config::{self, Config};

/// `redact` takes the secret values out of what is printed: a setting may
/// quote one (a token in upgrade.command, a password in an endpoint).
pub fn run(config: &Config, redact: &dyn Fn(&str) -> String) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut out = std::io::stdout().lock();
    let mut text = config.to_toml();
    text.push_str("\n# empty or unset values, and what ferry uses instead here\n");
    for (key, meaning) in meanings(config, &env, Path::new("/boot")) {
        text.push_str(&format!("# {key}: {meaning}\n"));
    }
    text.push_str("\n# secrets (from the environment only)\n");
    for var in config::SECRET_VARS {
        let shown = if env(var).is_some() {
            "set (masked)"
        } else {
            "not set"
        };
        text.push_str(&format!("# {var}: {shown}\n"));
    }
    // Each destination's settings and credentials, as preflight checks
    // them before a trip (nothing is sent).
    text.push_str("\n# destinations\n");
    let mut unusable = Vec::new();
    for name in &config.ship.backends {
        match ferry::destinations::check_upload(name, config, &env) {
            Ok(()) => text.push_str(&format!("# {name}: ready\n")),
            Err(e) => {
                text.push_str(&format!("# {name}: not ready\n"));
                unusable.push(format!("{name}: {e}"));
            }
        }
    }
    out.write_all(redact(&text).as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    if unusable.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for u in &unusable {
        eprintln!("ferry: {}", redact(u));
    }
    Ok(ExitCode::from(1))
}

/// For each setting left empty (or unset), what takes its place on this
/// machine: the printed TOML alone shows `""` where a default applies.
fn meanings(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    boot: &Path,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if config.upgrade.command.trim().is_empty() {
        out.push((
            "upgrade.command",
            format!(
                "`{}` (after a simulated run that lists the files it replaces)",
                ferry::phases::upgrade::DEFAULT_COMMAND
            ),
        ));
    }
    if config.upgrade.release.trim().is_empty() {
        out.push((
            "upgrade.release",
            "the apt sources stay on their release".into(),
        ));
    }
    if config.kernel.path.is_none() {
        let target = ferry::phases::kernel::target(config, boot);
        out.push((
            "kernel.path",
            match &target {
                Some(k) => format!(
                    "the newest kernel in {}: {} ({})",
                    boot.display(),
                    k.image.display(),
                    k.release
                ),
                None => format!("the newest kernel in {}: none found", boot.display()),
            },
        ));
        if config.kernel.initrd.is_none() {
            out.push((
                "kernel.initrd",
                match target.and_then(|k| k.initrd) {
                    Some(i) => format!("the one beside the kernel: {}", i.display()),
                    None => "the one beside the kernel: none found".into(),
                },
            ));
        }
    }
    if config.kernel.cmdline.trim().is_empty() {
        out.push((
            "kernel.cmdline",
            "the running kernel's (kexec --reuse-cmdline)".into(),
        ));
    }
    let uses = |b: &str| config.ship.backends.iter().any(|x| x == b);
    if uses("s3") {
        let s3 = &config.ship.s3;
        let region = [
            Some(s3.region.clone()),
            env("AWS_REGION"),
            env("AWS_DEFAULT_REGION"),
        ]
        .into_iter()
        .flatten()
        .map(|r| r.trim().to_string())
        .find(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into());
        if s3.region.trim().is_empty() {
            out.push((
                "ship.s3.region",
                format!("{region} (AWS_REGION, AWS_DEFAULT_REGION, else us-east-1)"),
            ));
        }
        if s3.endpoint.trim().is_empty() {
            out.push((
                "ship.s3.endpoint",
                format!("https://s3.{region}.amazonaws.com"),
            ));
        }
    }
    if uses("github") {
        let gh = &config.ship.github;
        if gh.repository.trim().is_empty() {
            out.push((
                "ship.github.repository",
                env("GITHUB_REPOSITORY").map_or_else(
                    || "GITHUB_REPOSITORY, which is not set".into(),
                    |r| format!("{r} (GITHUB_REPOSITORY)"),
                ),
            ));
        }
        if gh.api_url.trim().is_empty() {
            out.push((
                "ship.github.api_url",
                env("GITHUB_API_URL").map_or_else(
                    || "https://api.github.com".into(),
                    |u| format!("{u} (GITHUB_API_URL)"),
                ),
            ));
        }
        if gh.retention_days == 0 {
            out.push((
                "ship.github.retention_days",
                "the repository's artifact retention".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_explained_with_what_applies_here() {
        let boot = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        let none = |_: &str| None;
        let m = meanings(&config, &none, boot.path());
        let keys: Vec<&str> = m.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "upgrade.command",
                "upgrade.release",
                "kernel.path",
                "kernel.initrd",
                "kernel.cmdline"
            ]
        );
        assert!(m[2].1.ends_with("none found"), "{}", m[2].1);

        config.ship.backends = vec!["s3".into(), "github".into()];
        config.upgrade.command = "true".into();
        config.kernel.path = Some("/boot/vmlinuz-x".into());
        let env = |k: &str| (k == "AWS_REGION").then(|| "eu-west-1".to_string());
        let m: std::collections::BTreeMap<_, _> =
            meanings(&config, &env, boot.path()).into_iter().collect();
        assert!(!m.contains_key("upgrade.command") && !m.contains_key("kernel.path"));
        assert!(
            !m.contains_key("kernel.initrd"),
            "only for a kernel ferry picks"
        );
        assert_eq!(m["ship.s3.endpoint"], "https://s3.eu-west-1.amazonaws.com");
        assert!(m["ship.s3.region"].starts_with("eu-west-1 "));
        assert_eq!(
            m["ship.github.repository"],
            "GITHUB_REPOSITORY, which is not set"
        );
        assert_eq!(m["ship.github.api_url"], "https://api.github.com");
    }
}
