//! `preflight`: everything that can be checked before anything is touched.
//! All checks run, so one answer lists every problem with its fix.

use std::path::Path;

use crate::config::Config;
use crate::exec::{CommandSpec, Runner};
use crate::host;

use super::PhaseError;

/// One failed check: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub check: &'static str,
    pub message: String,
}

/// Checks that need no run directory. `kexec_load_disabled` is read from
/// `kexec_sysctl`, kernels from `boot` (paths, for tests); the backends' credentials
/// from `env`.
pub fn check(
    config: &Config,
    runner: &dyn Runner,
    kexec_sysctl: &Path,
    boot: &Path,
    env: crate::destinations::Env<'_>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut fail = |check: &'static str, message: String| problems.push(Problem { check, message });

    if !host::is_root() {
        fail("root", "ferry must run as root: run it with sudo".into());
    }
    if !host::systemd_running() {
        fail(
            "systemd",
            "systemd is not the init system here; ferry restores the session from a systemd unit after the reboot".into(),
        );
    }

    let criu = config.criu.path.display().to_string();
    match runner.run(
        &CommandSpec::new(&criu)
            .arg("check")
            .log_name("criu-check")
            .missing_hint("install it: apt-get install criu (or set criu.path / FERRY_CRIU_PATH)"),
    ) {
        Ok(out)
            if out.success() && format!("{}{}", out.stdout, out.stderr).contains("Looks good") => {}
        Ok(out) => fail(
            "criu",
            format!(
                "`{criu} check` does not say \"Looks good\": {} (this kernel lacks a feature criu needs; see the criu-check log in the run's logs)",
                last_line(&format!("{}{}", out.stderr, out.stdout))
            ),
        ),
        Err(e) => fail("criu", e.to_string()),
    }

    // The kernel about to be booted against the criu that will restore on
    // it. The upgrade may change both: the kernel phase checks again.
    if let Some(target) = super::kernel::target(config, boot) {
        match super::kernel::criu_problem(runner, &config.criu.path, &target.release) {
            Ok(Some(problem)) => fail("criu_kernel", problem),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "criu --version failed; the criu check reports it")
            }
        }
    }

    for (tool, hint) in [
        ("kexec", "install it: apt-get install kexec-tools"),
        ("iptables-save", "install it: apt-get install iptables"),
        ("unshare", "install it: apt-get install util-linux"),
    ] {
        if which(tool).is_none() {
            fail("tools", format!("`{tool}` is not installed: {hint}"));
        }
    }

    match std::fs::read_to_string(kexec_sysctl) {
        Ok(v) if v.trim() == "0" => {}
        Ok(_) => fail(
            "kexec",
            format!(
                "kexec is disabled ({} is 1; it can only be re-enabled by a reboot, and Secure Boot lockdown also forbids it)",
                kexec_sysctl.display()
            ),
        ),
        Err(e) => fail(
            "kexec",
            format!(
                "cannot read {}: {e} (is this kernel built with kexec?)",
                kexec_sysctl.display()
            ),
        ),
    }

    let dir = &config.state_dir;
    match std::fs::create_dir_all(dir).and_then(|_| probe_write(dir)) {
        Ok(()) => match host::free_bytes(dir) {
            Ok(free) if free / (1024 * 1024) < config.criu.min_free_mib => fail(
                "space",
                format!(
                    "{} has {} MiB free; the images need at least {} MiB (free space or set state_dir to a bigger disk)",
                    dir.display(),
                    free / (1024 * 1024),
                    config.criu.min_free_mib
                ),
            ),
            Ok(_) => {}
            Err(e) => fail(
                "space",
                format!("cannot read free space of {}: {e}", dir.display()),
            ),
        },
        Err(e) => fail(
            "state_dir",
            format!(
                "state directory {} is not writable: {e} (set state_dir in ferry.toml or FERRY_STATE_DIR)",
                dir.display()
            ),
        ),
    }
    if let Some(fs) = host::fs_type_of(dir)
        && (fs == "tmpfs" || fs == "ramfs")
    {
        fail(
            "state_dir",
            format!(
                "state directory {} is on {fs}, which the reboot empties: put state_dir on a disk",
                dir.display()
            ),
        );
    }
    for name in &config.ship.backends {
        if let Err(e) = crate::destinations::check_upload(name, config, env) {
            fail("backends", e.to_string());
        }
    }
    // The bundle waits there if no destination takes it: it must be usable
    // and outlive the reboot.
    match crate::shipping::open(config) {
        Ok(_) => {
            if let Some(fs) = host::fs_type_of(&config.spool.dir)
                && (fs == "tmpfs" || fs == "ramfs")
            {
                fail(
                    "spool",
                    format!(
                        "the spool {} is on {fs}, which the reboot empties: set spool.dir (FERRY_SPOOL_DIR) to a directory on a disk",
                        config.spool.dir.display()
                    ),
                );
            }
        }
        Err(e) => fail("spool", e.to_string()),
    }
    problems
}

fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".ferry-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// Find a program on PATH (plus the sbin directories sudo may drop).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Turn the problem list into the phase's error.
pub fn into_result(problems: Vec<Problem>) -> Result<(), PhaseError> {
    if problems.is_empty() {
        return Ok(());
    }
    let kind = format!("preflight_{}", problems[0].check);
    let message = problems
        .iter()
        .map(|p| p.message.clone())
        .collect::<Vec<_>>()
        .join("; ");
    Err(PhaseError::new(kind, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{CommandOutput, ExecError};

    struct FakeCriu(&'static str);
    impl Runner for FakeCriu {
        fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, ExecError> {
            if self.0 == "missing" {
                return Err(ExecError::NotFound {
                    program: spec.program.clone(),
                    hint: spec.missing_hint.clone().unwrap_or_default(),
                });
            }
            let stdout = if spec.args.first().map(String::as_str) == Some("--version") {
                "Version: 3.17.1\n".to_string()
            } else {
                self.0.to_string()
            };
            Ok(CommandOutput {
                command: spec.display(),
                code: Some(
                    if self.0.contains("Looks good") || spec.args[0] == "--version" {
                        0
                    } else {
                        1
                    },
                ),
                stdout,
                stderr: String::new(),
                log_file: None,
                duration: Default::default(),
            })
        }
    }

    fn config_in(dir: &Path) -> Config {
        let mut c = Config {
            state_dir: dir.join("state"),
            ..Config::default()
        };
        c.spool.dir = dir.join("spool");
        c.criu.min_free_mib = 1;
        c
    }

    #[test]
    fn missing_criu_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("kexec_load_disabled");
        std::fs::write(&sysctl, "0\n").unwrap();
        let problems = check(
            &config_in(dir.path()),
            &FakeCriu("missing"),
            &sysctl,
            dir.path(),
            &|_| None,
        );
        let criu = problems.iter().find(|p| p.check == "criu").unwrap();
        assert!(
            criu.message.contains("apt-get install criu"),
            "{}",
            criu.message
        );
    }

    #[test]
    fn kexec_disabled_is_reported_and_criu_ok_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("kexec_load_disabled");
        std::fs::write(&sysctl, "1\n").unwrap();
        let problems = check(
            &config_in(dir.path()),
            &FakeCriu("Looks good.\n"),
            &sysctl,
            dir.path(),
            &|_| None,
        );
        assert!(
            problems
                .iter()
                .any(|p| p.check == "kexec" && p.message.contains("disabled"))
        );
        assert!(!problems.iter().any(|p| p.check == "criu"));
    }

    #[test]
    fn an_unusable_spool_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        config.spool.dir = blocker;
        let problems = check(
            &config,
            &FakeCriu("Looks good."),
            &dir.path().join("nope"),
            dir.path(),
            &|_| None,
        );
        let p = problems.iter().find(|p| p.check == "spool").unwrap();
        assert!(p.message.contains("not a directory"), "{}", p.message);
    }

    #[test]
    fn unwritable_state_dir_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("kexec_load_disabled");
        std::fs::write(&sysctl, "0\n").unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let mut config = config_in(dir.path());
        config.state_dir = blocker.join("sub");
        let problems = check(
            &config,
            &FakeCriu("Looks good.\n"),
            &sysctl,
            dir.path(),
            &|_| None,
        );
        let p = problems.iter().find(|p| p.check == "state_dir").unwrap();
        assert!(p.message.contains("FERRY_STATE_DIR"), "{}", p.message);
    }

    /// Case 6: criu 3.17.1 (Debian 12) and a kernel with the split vDSO
    /// about to be booted: refused with the remedy, before anything.
    #[test]
    fn old_criu_against_the_kernel_about_to_be_booted() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("kexec_load_disabled");
        std::fs::write(&sysctl, "0\n").unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        std::fs::write(boot.join("vmlinuz-6.1.0-57-cloud-amd64"), "").unwrap();
        let criu = FakeCriu("Looks good.\n");
        let config = config_in(dir.path());
        let found = |problems: &[Problem]| problems.iter().any(|p| p.check == "criu_kernel");
        assert!(!found(&check(&config, &criu, &sysctl, &boot, &|_| None)));
        // The newest in /boot is what would be booted.
        std::fs::write(boot.join("vmlinuz-6.13.0-1-amd64"), "").unwrap();
        let problems = check(&config, &criu, &sysctl, &boot, &|_| None);
        let p = problems.iter().find(|p| p.check == "criu_kernel").unwrap();
        assert!(
            p.message
                .contains("criu 3.17.1 cannot restore on kernel 6.13")
                && p.message.contains("criu 4.1 or newer"),
            "{}",
            p.message
        );
        // --kernel names another one: its header decides.
        let mut config = config_in(dir.path());
        let image = boot.join("vmlinuz-custom");
        std::fs::write(
            &image,
            crate::phases::kernel::tests::fake_bzimage("6.1.0-58-cloud-amd64"),
        )
        .unwrap();
        config.kernel.path = Some(image);
        assert!(!found(&check(&config, &criu, &sysctl, &boot, &|_| None)));
    }

    #[test]
    fn a_backend_that_cannot_upload_is_reported_before_the_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("kexec_load_disabled");
        std::fs::write(&sysctl, "0\n").unwrap();
        let mut config = config_in(dir.path());
        config.ship.backends = vec!["dir".into(), "github".into()];
        let problems = check(
            &config,
            &FakeCriu("Looks good.\n"),
            &sysctl,
            dir.path(),
            &|_| None,
        );
        let p = problems.iter().find(|p| p.check == "backends").unwrap();
        assert!(
            p.message.contains("ACTIONS_RUNTIME_TOKEN") && p.message.contains("github-script"),
            "{}",
            p.message
        );
        config.ship.backends = vec!["dri".into()];
        let problems = check(
            &config,
            &FakeCriu("Looks good.\n"),
            &sysctl,
            dir.path(),
            &|_| None,
        );
        assert!(
            problems
                .iter()
                .any(|p| p.check == "backends" && p.message.contains("\"dri\""))
        );
    }

    #[test]
    fn a_misconfigured_s3_backend_is_reported_before_the_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("kexec_load_disabled");
        std::fs::write(&sysctl, "0\n").unwrap();
        let mut config = config_in(dir.path());
        config.ship.dir = dir.path().join("bundles");
        let problems = check(
            &config,
            &FakeCriu("Looks good.\n"),
            &sysctl,
            dir.path(),
            &|_| None,
        );
        assert!(
            !problems.iter().any(|p| p.check == "backends"),
            "{problems:?}"
        );
        config.ship.backends = vec!["dir".into(), "s3".into()];
        let problems = check(
            &config,
            &FakeCriu("Looks good.\n"),
            &sysctl,
            dir.path(),
            &|_| None,
        );
        let p = problems.iter().find(|p| p.check == "backends").unwrap();
        assert!(p.message.contains("FERRY_SHIP_S3_BUCKET"), "{}", p.message);
    }

    #[test]
    fn problems_join_into_one_error() {
        let err = into_result(vec![
            Problem {
                check: "kexec",
                message: "a".into(),
            },
            Problem {
                check: "criu",
                message: "b".into(),
            },
        ])
        .unwrap_err();
        assert_eq!(err.kind, "preflight_kexec");
        assert_eq!(err.message, "a; b");
    }
}
