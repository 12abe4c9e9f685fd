//! `upgrade`: the package upgrade, by default a non-interactive apt
//! dist-upgrade, optionally after switching the sources to a new release.

use std::path::Path;
use std::time::Duration;

use crate::exec::CommandSpec;

use super::{Ctx, PhaseError};

pub const DEFAULT_COMMAND: &str = "apt-get update && apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade";

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let release = ctx.config.upgrade.release.trim().to_string();
    if !release.is_empty() {
        switch_release(ctx, Path::new("/etc/apt"), &release)?;
    }
    let command = if ctx.config.upgrade.command.trim().is_empty() {
        DEFAULT_COMMAND.to_string()
    } else {
        ctx.config.upgrade.command.clone()
    };
    ctx.runner
        .run(
            &CommandSpec::new("sh")
                .args(["-c", &command])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("APT_LISTCHANGES_FRONTEND", "none")
                .env("NEEDRESTART_MODE", "a")
                .log_name("upgrade")
                .timeout(Duration::from_secs(3 * 3600)),
        )?
        .check()
        .map_err(|e| {
            PhaseError::new(
                "upgrade_failed",
                format!("the upgrade command failed, nothing was frozen: {e}"),
            )
        })?;
    Ok(())
}

/// Replace the running release's codename with `release` in every apt
/// source file, keeping a copy of each original in the run's logs.
fn switch_release(ctx: &mut Ctx<'_>, apt_dir: &Path, release: &str) -> Result<(), PhaseError> {
    let current = current_codename().ok_or_else(|| {
        PhaseError::new(
            "upgrade_release",
            "cannot tell the current release: /etc/os-release has no VERSION_CODENAME",
        )
    })?;
    if !release
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(PhaseError::new(
            "upgrade_release",
            format!("release {release:?} is not a codename (like trixie)"),
        ));
    }
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(entries) = std::fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let backup = ctx.run.logs().join("apt-sources-before");
    std::fs::create_dir_all(&backup).map_err(|e| {
        PhaseError::new(
            "upgrade_release",
            format!("cannot create {}: {e}", backup.display()),
        )
    })?;
    for file in files {
        let is_source = file
            .extension()
            .is_some_and(|e| e == "list" || e == "sources");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if !is_source {
            continue;
        }
        let name = file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let _ = std::fs::write(backup.join(name), &text);
        let switched = switch_codename(&text, &current, release);
        if switched != text {
            crate::state::write_atomic(&file, switched.as_bytes()).map_err(|e| {
                PhaseError::new(
                    "upgrade_release",
                    format!("cannot rewrite {}: {e}", file.display()),
                )
            })?;
            tracing::info!(file = %file.display(), from = %current, to = %release, "apt sources switched");
        }
    }
    Ok(())
}

fn current_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// Replace whole-word occurrences of `from` (also `from-security`,
/// `from-updates`, …) with `to`.
pub fn switch_codename(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find(from) {
            let before_ok = rest[..pos]
                .chars()
                .last()
                .is_none_or(|c| c.is_whitespace() || c == '/');
            let after = &rest[pos + from.len()..];
            let after_ok = after
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '-' || c == '/');
            out.push_str(&rest[..pos]);
            out.push_str(if before_ok && after_ok { to } else { from });
            rest = after;
        }
        out.push_str(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_suites_but_not_urls_or_comments() {
        let text = "deb http://deb.debian.org/debian bookworm main\n# bookworm old\ndeb http://security.debian.org/debian-security bookworm-security main\n";
        assert_eq!(
            switch_codename(text, "bookworm", "trixie"),
            "deb http://deb.debian.org/debian trixie main\n# bookworm old\ndeb http://security.debian.org/debian-security trixie-security main\n"
        );
        let deb822 = "Suites: bookworm bookworm-updates\nURIs: http://x/bookwormish\n";
        assert_eq!(
            switch_codename(deb822, "bookworm", "trixie"),
            "Suites: trixie trixie-updates\nURIs: http://x/bookwormish\n"
        );
    }
}
