//! `prepare-restore`: what the next boot needs. The firewall rules are
//! saved AFTER the dump, so CRIU's lock rules (which keep the client's
//! packets from meeting a closed port) are among them.

use std::path::{Path, PathBuf};

use crate::exec::CommandSpec;
use crate::units;

use super::preflight::which;
use super::{Ctx, PhaseError};

/// CRIU marks its own packets with this value; its lock rules match on it.
pub const CRIU_LOCK_MARK: &str = "0xc114";

pub fn run(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    save_volatile(ctx)?;
    let mut restores = Vec::new();
    let mut files = Vec::new();
    let mut lock_rules = Vec::new();
    for (save, restore, file) in [
        ("iptables-save", "iptables-restore", "iptables.rules"),
        ("ip6tables-save", "ip6tables-restore", "ip6tables.rules"),
    ] {
        let (Some(save_bin), Some(restore_bin)) = (which(save), which(restore)) else {
            if save == "iptables-save" {
                return Err(PhaseError::new(
                    "firewall_tools",
                    "iptables-save is missing: apt-get install iptables",
                ));
            }
            continue;
        };
        let out = ctx
            .runner
            .run(
                &CommandSpec::new(save_bin.display().to_string())
                    .arg("-c")
                    .log_name(save)
                    .full_stdout(),
            )?
            .check()?;
        let path = ctx.run.firewall().join(file);
        crate::state::write_atomic(&path, out.stdout.as_bytes()).map_err(|e| {
            PhaseError::new(
                "firewall_save",
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        lock_rules.extend(
            out.stdout
                .lines()
                .filter(|l| is_lock_rule(l))
                .map(str::to_string),
        );
        restores.push((restore_bin, path.clone()));
        files.push(path);
    }
    let has_tcp = ctx
        .state
        .session
        .as_ref()
        .is_some_and(|s| !s.tcp.is_empty());
    if has_tcp && lock_rules.is_empty() {
        tracing::warn!(
            "the session has TCP connections but no CRIU lock rule was found in the saved firewall rules"
        );
    }
    tracing::info!(
        rules = lock_rules.len(),
        "firewall saved with CRIU's lock rules"
    );
    ctx.state.handoff.firewall_files = files;
    ctx.state.handoff.lock_rules = lock_rules;
    ctx.save()?;

    install_units(ctx, Path::new(units::UNIT_DIR), &restores)?;
    Ok(())
}

/// The session is frozen and gone: what it had on tmpfs cannot change now
/// and is saved for the next boot.
fn save_volatile(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    let mut session = ctx.session()?;
    // What the session had open right before the freeze, including files
    // it opened after `locate`.
    if let Some(files) = &ctx.state.handoff.volatile_at_dump {
        session.files = files.clone();
    }
    let tmp_hidden = ctx.state.handoff.tmp_hidden_at_next_boot;
    let fs_of =
        |p: &Path| crate::volatile::fs_after_reboot(p, tmp_hidden, &crate::volatile::host_fs_of);
    let saved = crate::volatile::save(&session, &ctx.run.root.join("volatile"), &fs_of)
        .map_err(|e| PhaseError::new("volatile_save", e.to_string()))?;
    if !saved.is_empty() {
        tracing::info!(
            paths = saved.len(),
            "files on tmpfs saved to be put back after the reboot"
        );
    }
    ctx.state.handoff.volatile = saved;
    ctx.save()
}

/// A CRIU lock rule in `iptables-save` output (with or without the
/// `[packets:bytes]` counters `-c` puts in front).
pub fn is_lock_rule(line: &str) -> bool {
    let rule = match line.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map(|(_, r)| r).unwrap_or(""),
        None => line,
    };
    rule.starts_with("-A ") && rule.contains(CRIU_LOCK_MARK) && rule.contains("-j DROP")
}

/// Write, load and enable the two units.
pub fn install_units(
    ctx: &mut Ctx<'_>,
    dir: &Path,
    restores: &[(PathBuf, PathBuf)],
) -> Result<(), PhaseError> {
    let run_id = ctx.state.run_id.clone();
    let write = |name: &str, text: String| -> Result<(), PhaseError> {
        let path = dir.join(name);
        crate::state::write_atomic(&path, text.as_bytes()).map_err(|e| {
            PhaseError::new(
                "unit_install",
                format!("cannot write {}: {e}", path.display()),
            )
        })
    };
    write(
        units::NETFILTER_UNIT,
        units::netfilter_unit(&run_id, restores),
    )?;
    write(
        units::RESUME_UNIT,
        units::resume_unit(&run_id, &ctx.run.bin(), &ctx.run.root),
    )?;
    ctx.runner
        .run(&CommandSpec::new("systemctl").arg("daemon-reload"))?
        .check()?;
    ctx.runner
        .run(&CommandSpec::new("systemctl").args([
            "enable",
            units::NETFILTER_UNIT,
            units::RESUME_UNIT,
        ]))?
        .check()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_criu_lock_rules_only() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n[3:180] -A INPUT -s 10.0.2.2/32 -d 10.0.2.15/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 59656 --dport 22 -j DROP\n-A INPUT -s 10.0.2.2/32 -d 10.0.2.15/32 -p tcp -m mark ! --mark 0xc114 -m tcp --sport 59656 --dport 22 -j DROP\n-A INPUT -p tcp --dport 22 -j ACCEPT\n";
        let rules: Vec<&str> = saved.lines().filter(|l| is_lock_rule(l)).collect();
        assert_eq!(rules.len(), 2);
        assert!(!is_lock_rule(":INPUT ACCEPT [0:0]"));
    }
}
