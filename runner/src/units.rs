//! The systemd units a trip installs for the next boot.

use std::path::{Path, PathBuf};

pub const RESUME_UNIT: &str = "ferry-resume.service";
pub const NETFILTER_UNIT: &str = "ferry-netfilter.service";
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// Drains the spool (`ferry ship`); started by its timer.
pub const SHIP_UNIT: &str = "ferry-ship.service";
/// Starts [`SHIP_UNIT`] after every boot and periodically.
pub const SHIP_TIMER: &str = "ferry-ship.timer";

/// `ferry ship` as a oneshot service. It has no `[Install]` of its own: a
/// oneshot wanted by multi-user.target would hold the boot until every
/// destination answered; its timer starts it soon after boot instead.
/// The drain is crash-safe, so stopping it at any moment loses nothing.
pub fn ship_service(ferry: &Path, env: &[(String, String)]) -> String {
    let mut environment = String::new();
    for (k, v) in env {
        environment.push_str(&format!("Environment=\"{k}={}\"\n", v.replace('"', "\\\"")));
    }
    format!(
        "# Written by `ferry install`; `ferry install --uninstall` removes it.\n\
[Unit]\n\
Description=ferry: ship the bundles waiting in the spool\n\
Wants=network-online.target\n\
After=network-online.target local-fs.target\n\
\n\
[Service]\n\
Type=oneshot\n\
ExecStart={ferry} ship\n\
{environment}\
Nice=10\n\
IOSchedulingClass=best-effort\n\
IOSchedulingPriority=7\n\
TimeoutStartSec=2h\n",
        ferry = ferry.display(),
    )
}

/// After every boot (soon, once the network is up) and every
/// `interval` after the last drain ended.
pub fn ship_timer(interval: &str) -> String {
    format!(
        "# Written by `ferry install`; `ferry install --uninstall` removes it.\n\
[Unit]\n\
Description=ferry: ship waiting bundles after boot and every {interval}\n\
\n\
[Timer]\n\
OnBootSec=30s\n\
OnUnitInactiveSec={interval}\n\
RandomizedDelaySec=30s\n\
Unit={SHIP_UNIT}\n\
\n\
[Install]\n\
WantedBy=timers.target\n"
    )
}

/// Loads the saved firewall rules (CRIU's lock rules among them) before any
/// network interface comes up, whatever brings the network up: ifupdown,
/// networkd and NetworkManager all order themselves after network-pre.target.
pub fn netfilter_unit(run_id: &str, restores: &[(PathBuf, PathBuf)]) -> String {
    let mut exec = String::new();
    for (tool, rules) in restores {
        exec.push_str(&format!(
            "ExecStart={} -w -c {}\n",
            tool.display(),
            rules.display()
        ));
    }
    format!(
        "# Written by ferry for run {run_id}; disabled again once the session is restored.\n\
[Unit]\n\
Description=ferry: firewall rules that hold the checkpointed session's TCP connections\n\
DefaultDependencies=no\n\
After=local-fs.target\n\
Before=network-pre.target\n\
Wants=network-pre.target\n\
\n\
[Service]\n\
Type=oneshot\n\
RemainAfterExit=yes\n\
{exec}\
\n\
[Install]\n\
WantedBy=multi-user.target\n"
    )
}

/// The one-shot restore. Its main process stays the parent of the new pid
/// namespace's init for as long as the session lives: stopping this unit
/// would kill the session, so nothing stops it; it is only disabled.
pub fn resume_unit(run_id: &str, ferry: &Path, run_dir: &Path) -> String {
    format!(
        "# Written by ferry for run {run_id}; disabled again once the session is restored.\n\
[Unit]\n\
Description=ferry: restore the checkpointed session of run {run_id}\n\
After=network-online.target {NETFILTER_UNIT}\n\
Wants=network-online.target\n\
ConditionPathExists={images}/inventory.img\n\
\n\
[Service]\n\
Type=idle\n\
ExecStart={ferry} resume --run-dir {run}\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n",
        ferry = ferry.display(),
        run = run_dir.display(),
        images = run_dir.join("images").display(),
    )
}

/// True when the unit file at `path` was written by ferry for `run_id`
/// (its first line says so): a unit of another run is not this run's to
/// disable.
pub fn written_for(path: &Path, run_id: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| {
        t.lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("# Written by ferry for run {run_id};")))
    })
}

/// `systemd-run` starting `ferry <subcommand> --run-dir <run>` from the
/// run's own binary as transient unit `ferry-<role>-<run id>`, outside the
/// caller's process tree and cgroup. Returns the unit name and the command.
pub fn transient(
    role: &str,
    run_id: &str,
    ferry: &Path,
    subcommand: &str,
    run_dir: &Path,
) -> (String, crate::exec::CommandSpec) {
    let unit = format!("ferry-{role}-{run_id}");
    let spec = crate::exec::CommandSpec::new("systemd-run")
        .args([
            "--unit",
            &unit,
            "--collect",
            "--quiet",
            "--service-type=exec",
        ])
        .arg(format!("--description=ferry {role} for run {run_id}"))
        .arg(ferry.display().to_string())
        .args([subcommand, "--run-dir"])
        .arg(run_dir.display().to_string());
    (unit, spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netfilter_unit_runs_before_the_network() {
        let text = netfilter_unit(
            "r1",
            &[(
                PathBuf::from("/usr/sbin/iptables-restore"),
                PathBuf::from("/var/lib/ferry/runs/r1/firewall/iptables.rules"),
            )],
        );
        assert!(text.contains("Before=network-pre.target\nWants=network-pre.target\n"));
        assert!(text.contains("ExecStart=/usr/sbin/iptables-restore -w -c /var/lib/ferry/runs/r1/firewall/iptables.rules\n"));
        assert!(text.contains("DefaultDependencies=no"));
    }

    #[test]
    fn ship_units_drain_after_boot_and_periodically() {
        let service = ship_service(
            Path::new("/usr/local/bin/ferry"),
            &[("FERRY_SPOOL_DIR".into(), "/srv/spool dir".into())],
        );
        assert!(service.contains("Type=oneshot\nExecStart=/usr/local/bin/ferry ship\n"));
        assert!(service.contains("Environment=\"FERRY_SPOOL_DIR=/srv/spool dir\"\n"));
        assert!(service.contains("After=network-online.target"));
        assert!(
            !service.contains("[Install]"),
            "a oneshot at boot would hold the boot"
        );
        let timer = ship_timer("15min");
        assert!(timer.contains("OnBootSec=30s\nOnUnitInactiveSec=15min\n"));
        assert!(timer.contains("Unit=ferry-ship.service"));
        assert!(timer.contains("WantedBy=timers.target"));
    }

    #[test]
    fn a_unit_belongs_to_the_run_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESUME_UNIT);
        std::fs::write(&path, resume_unit("r1", Path::new("/f"), Path::new("/r"))).unwrap();
        assert!(written_for(&path, "r1"));
        assert!(!written_for(&path, "r"));
        assert!(!written_for(&dir.path().join("missing"), "r1"));
    }

    #[test]
    fn resume_unit_is_conditional_on_the_images() {
        let text = resume_unit(
            "r1",
            Path::new("/var/lib/ferry/runs/r1/bin/ferry"),
            Path::new("/var/lib/ferry/runs/r1"),
        );
        assert!(text.contains("ConditionPathExists=/var/lib/ferry/runs/r1/images/inventory.img"));
        assert!(text.contains(
            "ExecStart=/var/lib/ferry/runs/r1/bin/ferry resume --run-dir /var/lib/ferry/runs/r1\n"
        ));
        assert!(text.contains("After=network-online.target ferry-netfilter.service"));
    }
}
