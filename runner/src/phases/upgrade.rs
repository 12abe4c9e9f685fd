//! `upgrade`: the package upgrade, by default a non-interactive apt
//! dist-upgrade, optionally after switching the sources to a new release.

use std::path::Path;
use std::time::Duration;

use crate::exec::CommandSpec;
use crate::notes::{Level, Note};

use super::{Ctx, PhaseError};

pub const DEFAULT_COMMAND: &str = "apt-get update && apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade";
/// The default upgrade once the lists are fresh (the preview updated them).
const UPGRADE_AFTER_UPDATE: &str =
    "apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade";

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let release = ctx.config.upgrade.release.trim().to_string();
    if !release.is_empty() {
        switch_release(ctx, Path::new("/etc/apt"), &release)?;
    }
    let command = if ctx.config.upgrade.command.trim().is_empty() {
        preview(ctx, "upgrade")?;
        UPGRADE_AFTER_UPDATE.to_string()
    } else {
        ctx.state.notes.push(Note::new(
            "upgrade",
            "upgrade-not-previewed",
            Level::Info,
            "upgrade.command is set: ferry cannot tell beforehand which files it replaces; the dump finds them",
        ));
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

/// `apt-get update`, then what `apt-get dist-upgrade` would do: the open
/// files of the packages it replaces are listed as warnings, before
/// anything is frozen.
pub fn preview(ctx: &mut Ctx<'_>, phase: &str) -> Result<(), PhaseError> {
    let env = |spec: CommandSpec| {
        spec.env("DEBIAN_FRONTEND", "noninteractive")
            .timeout(Duration::from_secs(1800))
    };
    ctx.runner
        .run(&env(CommandSpec::new("apt-get")
            .arg("update")
            .log_name("apt-update")))?
        .check()
        .map_err(|e| {
            PhaseError::new(
                "upgrade_failed",
                format!("apt-get update failed, nothing was frozen: {e}"),
            )
        })?;
    let out = ctx
        .runner
        .run(
            &env(CommandSpec::new("apt-get").args(["-s", "dist-upgrade"]))
                .log_name("apt-simulate")
                .full_stdout(),
        )?
        .check()
        .map_err(|e| {
            PhaseError::new(
                "upgrade_failed",
                format!("apt-get -s dist-upgrade failed, nothing was frozen: {e}"),
            )
        })?;
    let changes = parse_simulation(&out.stdout);
    let notes = match &ctx.state.session {
        Some(session) => replaced_files(
            session,
            &changes,
            &|pkg| dpkg_list(Path::new("/var/lib/dpkg/info"), pkg),
            &|p| std::fs::canonicalize(p).ok(),
            phase,
        ),
        None => Vec::new(),
    };
    for n in &notes {
        tracing::warn!("{}", n.line());
    }
    ctx.state.notes.extend(notes);
    ctx.save()
}

/// One package `apt-get -s` would touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageChange {
    pub name: String,
    /// The installed version, when it replaces or removes one.
    pub old: Option<String>,
    /// The version it installs (`None` for a removal).
    pub new: Option<String>,
}

/// `Inst sudo [1.9.13p3-1] (1.9.13p3-2 Debian:12 [amd64])`, `Inst pkg (1.0 …)`
/// (a new package), `Remv pkg [1.0]`.
pub fn parse_simulation(text: &str) -> Vec<PackageChange> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let action = words.next()?;
            if action != "Inst" && action != "Remv" {
                return None;
            }
            let name = words.next()?.to_string();
            let rest: Vec<&str> = words.collect();
            let old = rest
                .first()
                .and_then(|w| w.strip_prefix('['))
                .and_then(|w| w.strip_suffix(']'))
                .map(str::to_string);
            let new = (action == "Inst")
                .then(|| {
                    rest.iter()
                        .find_map(|w| w.strip_prefix('('))
                        .map(str::to_string)
                })
                .flatten();
            Some(PackageChange { name, old, new })
        })
        .collect()
}

/// The paths dpkg lists for `pkg` (`<pkg>.list`, or `<pkg>:<arch>.list`),
/// its conffiles left out: dpkg replaces those only when the package
/// changes them and they were not edited, and keeps them otherwise.
pub fn dpkg_list(info: &Path, pkg: &str) -> Vec<String> {
    let conffiles: std::collections::HashSet<String> = package_file(info, pkg, "conffiles")
        .map(|t| t.lines().map(|l| l.trim().to_string()).collect())
        .unwrap_or_default();
    package_file(info, pkg, "list")
        .map(|t| {
            t.lines()
                .filter(|l| !conffiles.contains(*l))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `<pkg>.<what>` of dpkg's info directory, or `<pkg>:<arch>.<what>`.
fn package_file(info: &Path, pkg: &str, what: &str) -> Option<String> {
    let bare = pkg.split(':').next().unwrap_or(pkg);
    let suffix = format!(".{what}");
    let mut names = vec![format!("{pkg}{suffix}"), format!("{bare}{suffix}")];
    if let Ok(entries) = std::fs::read_dir(info) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{bare}:")) && n.ends_with(&suffix) {
                names.push(n);
            }
        }
    }
    names
        .iter()
        .find_map(|n| std::fs::read_to_string(info.join(n)).ok())
}

/// Warnings for the session's files that `changes` would replace or remove.
/// `canonical` resolves a packaged path as the kernel shows it (on merged
/// /usr, `/lib/x/libc.so.6` is `/usr/lib/x/libc.so.6`).
pub fn replaced_files(
    session: &crate::session::Session,
    changes: &[PackageChange],
    list: &dyn Fn(&str) -> Vec<String>,
    canonical: &dyn Fn(&Path) -> Option<std::path::PathBuf>,
    phase: &str,
) -> Vec<Note> {
    use std::collections::HashMap;
    let by_name: HashMap<&str, Vec<&crate::session::UsedFile>> = {
        let mut m: HashMap<&str, Vec<&crate::session::UsedFile>> = HashMap::new();
        for f in session.files.iter().filter(|f| !f.deleted) {
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            m.entry(name).or_default().push(f);
        }
        m
    };
    let mut notes = Vec::new();
    for c in changes.iter().filter(|c| c.old.is_some()) {
        for packaged in list(&c.name) {
            let name = packaged.rsplit('/').next().unwrap_or(&packaged);
            let Some(candidates) = by_name.get(name) else {
                continue;
            };
            let real = canonical(Path::new(&packaged))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| packaged.clone());
            for f in candidates.iter().filter(|f| f.path == real) {
                let what = match &c.new {
                    Some(new) => format!(
                        "package {} {} → {new}",
                        c.name,
                        c.old.as_deref().unwrap_or("?")
                    ),
                    None => format!(
                        "package {} {}, removed",
                        c.name,
                        c.old.as_deref().unwrap_or("?")
                    ),
                };
                let set_id_exe = f.mode & 0o6000 != 0
                    && f.users
                        .iter()
                        .any(|u| u.how == crate::session::FileUse::Exe);
                notes.push(
                    Note::new(
                        phase,
                        "upgrade-replaces-open-file",
                        Level::Warning,
                        format!(
                            "the upgrade replaces {} ({what}), which the session uses ({}): the session keeps the old copy, carried in the images{}",
                            f.path,
                            f.describe_users(session),
                            if set_id_exe {
                                "; dpkg leaves a replaced set-id program mode 0600, and ferry gives the copy its exec bits back"
                            } else {
                                ""
                            }
                        ),
                    )
                    .with_fix("nothing to do if the package replaces the file; if its scripts change it in place instead, the restore fails (file-size-mismatch) and ferry names the file"),
                );
            }
        }
    }
    notes
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

    const SIMULATION: &str = "\
NOTE: This is only a simulation!
Reading package lists...
The following packages will be upgraded:
  ferry-lab-kernel sudo
Inst linux-image-6.1.0-57-cloud-amd64 (6.1.0-57 ferry-ci:./ [amd64])
Inst ferry-lab-kernel [1] (2 ferry-ci:./ [all])
Inst sudo [1.9.13p3-1+deb12u4] (1.9.13p3-1+deb12u4+ferry1 ferry-ci:./ [amd64])
Remv libold1:amd64 [0.9]
Conf sudo (1.9.13p3-1+deb12u4+ferry1 ferry-ci:./ [amd64])
";

    #[test]
    fn the_simulation_names_what_is_replaced() {
        let c = parse_simulation(SIMULATION);
        assert_eq!(c.len(), 4, "{c:#?}");
        assert_eq!(c[0].old, None);
        assert_eq!(c[0].new.as_deref(), Some("6.1.0-57"));
        assert_eq!(c[2].name, "sudo");
        assert_eq!(c[2].old.as_deref(), Some("1.9.13p3-1+deb12u4"));
        assert_eq!(c[2].new.as_deref(), Some("1.9.13p3-1+deb12u4+ferry1"));
        assert_eq!(c[3].name, "libold1:amd64");
        assert_eq!(
            (c[3].old.as_deref(), c[3].new.as_deref()),
            (Some("0.9"), None)
        );
    }

    #[test]
    fn open_files_of_replaced_packages_are_warned_about() {
        let mut s = crate::session::tests::sample();
        // sudo, the exe of 466, set-uid; libc mapped, at its /usr path.
        let mut libc = s.files[0].clone();
        libc.path = "/usr/lib/x86_64-linux-gnu/libc.so.6".into();
        libc.mode = 0o755;
        libc.users = vec![crate::session::FileUser {
            pid: 453,
            how: crate::session::FileUse::Map,
        }];
        s.files.push(libc);
        let mut changes = parse_simulation(SIMULATION);
        changes.push(PackageChange {
            name: "libc6".into(),
            old: Some("2.36-9".into()),
            new: Some("2.36-9+deb12u9".into()),
        });
        let list = |pkg: &str| -> Vec<String> {
            match pkg {
                "sudo" => vec![
                    "/usr".into(),
                    "/usr/bin/sudo".into(),
                    "/usr/bin/sudoedit".into(),
                ],
                "libc6" => vec!["/lib/x86_64-linux-gnu/libc.so.6".into()],
                "linux-image-6.1.0-57-cloud-amd64" => vec!["/usr/bin/sudo".into()],
                _ => vec![],
            }
        };
        let canonical = |p: &Path| -> Option<std::path::PathBuf> {
            Some(std::path::PathBuf::from(p.display().to_string().replacen(
                "/lib/",
                "/usr/lib/",
                1,
            )))
        };
        let notes = replaced_files(&s, &changes, &list, &canonical, "upgrade");
        assert_eq!(notes.len(), 2, "{notes:#?}");
        assert!(notes[0].message.contains(
            "/usr/bin/sudo (package sudo 1.9.13p3-1+deb12u4 → 1.9.13p3-1+deb12u4+ferry1)"
        ));
        assert!(notes[0].message.contains("pid 466 (bash) runs it"));
        assert!(
            notes[0].message.contains("mode 0600"),
            "set-id exe: {}",
            notes[0].message
        );
        assert!(
            notes[1]
                .message
                .contains("/usr/lib/x86_64-linux-gnu/libc.so.6 (package libc6")
        );
        assert!(!notes[1].message.contains("0600"));
        assert!(notes.iter().all(|n| n.level == Level::Warning));
    }

    #[test]
    fn dpkg_lists_by_name_or_arch() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sudo.list"),
            "/.\n/etc/sudoers\n/usr/bin/sudo\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("sudo.conffiles"), "/etc/sudoers\n").unwrap();
        std::fs::write(
            dir.path().join("libc6:amd64.list"),
            "/lib/x86_64-linux-gnu/libc.so.6\n",
        )
        .unwrap();
        assert_eq!(dpkg_list(dir.path(), "sudo"), vec!["/.", "/usr/bin/sudo"]);
        assert_eq!(
            dpkg_list(dir.path(), "libc6"),
            vec!["/lib/x86_64-linux-gnu/libc.so.6"]
        );
        assert_eq!(dpkg_list(dir.path(), "libc6:amd64").len(), 1);
        assert!(dpkg_list(dir.path(), "nope").is_empty());
    }

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
