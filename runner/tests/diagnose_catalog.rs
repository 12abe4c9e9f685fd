//! Every catalog kind from its own realistic log, and the traps: harmless
//! `Error` lines, a missing final status line, interleaved tasks,
//! misleading wording, cut lines, unknown failures.

mod common;

use std::path::PathBuf;

use ferry::diagnose::catalog::Catalog;
use ferry::diagnose::{Diagnosis, LogStatus, Role, Verdict, diagnose_paths};

fn diagnose(p: PathBuf) -> Diagnosis {
    diagnose_paths(std::slice::from_ref(&p), None)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fixture_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(common::fixtures().join(dir))
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// Kinds listed in shared/research/criu-failures.md (the summary table).
const RESEARCH_KINDS: &[&str] = &[
    "ext-unix-sk-missing",
    "ext-unix-stream",
    "ext-unix-restore-option",
    "shell-job-dangling-tty",
    "ctty-inheritance",
    "tty-index-busy",
    "tcp-established-required",
    "tcp-in-flight",
    "tcp-connect-back-failed",
    "tcp-bind-addr-in-use",
    "tcp-image-needs-option",
    "netlock-iptables-missing",
    "netlock-iptables-nft-conflict",
    "netlock-rule-missing",
    "nftables-unsupported",
    "ghost-limit",
    "link-remap-required",
    "file-locks-held",
    "fifo-missing",
    "file-missing",
    "file-size-mismatch",
    "file-mode-mismatch",
    "exe-not-executable",
    "pid-in-use",
    "sid-gid-intersects-pid",
    "fsnotify-unresolvable",
    "inotify-watch-restore-einval",
    "cgroup-move-failed",
    "seccomp-suspend-failed",
    "ptrace-seize-denied",
    "criu-in-dumped-tree",
    "task-uninterruptible",
    "restore-attach-eperm",
    "zombie-outside-session",
    "vdso-rt-bounds",
    "vdso-image-mismatch",
    "kernel-feature-missing",
    "cpu-feature-mismatch",
    "pagemap-read-failed",
    "images-no-space",
    "unsupported-file-type",
    "device-mapping-unsupported",
    "mnt-external-bind",
    "mnt-unreachable-sharing",
    "mnt-lookup-failed",
    "mnt-propagation-kernel",
    "images-missing",
];

#[test]
fn catalog_covers_every_researched_kind_and_each_has_a_fixture() {
    let cat = Catalog::builtin();
    let fixtures: Vec<String> = fixture_files("criu")
        .iter()
        .chain(fixture_files("dmesg").iter())
        .map(|p| {
            p.file_stem()
                .unwrap()
                .to_string_lossy()
                .split("--")
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in RESEARCH_KINDS {
        assert!(cat.kind(id).is_some(), "catalog lacks {id}");
    }
    for k in &cat.kinds {
        assert!(
            fixtures.contains(&k.id),
            "no fixture for catalog kind {}",
            k.id
        );
    }
}

#[test]
fn every_fixture_names_its_kind() {
    let cat = Catalog::builtin();
    let mut checked = 0;
    for path in fixture_files("criu") {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let id = stem.split("--").next().unwrap();
        let kind = cat
            .kind(id)
            .unwrap_or_else(|| panic!("{stem}: no kind {id}"));
        let d = diagnose(path.clone());
        if kind.fatal {
            assert_eq!(d.verdict, Verdict::Diagnosed, "{stem}: {d:#?}");
            let root = d.root_cause.as_ref().expect("root");
            assert_eq!(root.kind, id, "{stem}: {d:#?}");
            assert!(root.evidence.iter().any(|e| e.key), "{stem}");
            assert!(!root.remedy.is_empty());
        } else {
            assert_eq!(d.verdict, Verdict::NoFailure, "{stem}: {d:#?}");
            let f = d
                .findings
                .iter()
                .find(|f| f.kind == id)
                .expect("advisory finding");
            assert_eq!(f.role, Role::Advisory);
        }
        checked += 1;
    }
    assert!(checked >= 47);
}

#[test]
fn dmesg_fixtures_name_their_kind() {
    for path in fixture_files("dmesg") {
        let id = path.file_stem().unwrap().to_string_lossy().into_owned();
        let d = diagnose(path.clone());
        assert_eq!(d.verdict, Verdict::NoFailure);
        let kinds: Vec<_> = d.findings.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, vec![id.as_str()], "{}", path.display());
        assert_eq!(d.logs[0].lines, 6);
    }
}

fn trap(name: &str) -> Diagnosis {
    diagnose(common::fixtures().join("traps").join(name))
}

#[test]
fn harmless_errors_in_a_successful_dump_are_no_failure() {
    let d = trap("harmless-errors-success.log");
    assert_eq!(d.verdict, Verdict::NoFailure, "{d:#?}");
    assert!(d.root_cause.is_none());
    assert!(d.findings.is_empty(), "{d:#?}");
    assert_eq!(d.logs[0].status, LogStatus::Succeeded);
    assert_eq!(d.logs[0].operation.as_deref(), Some("dump"));
    // The two `Error (` in file names are not errors.
    assert_eq!(d.logs[0].errors, 4);
}

#[test]
fn missing_final_status_line_still_names_the_error() {
    let d = trap("missing-status-line.log");
    assert_eq!(d.verdict, Verdict::Diagnosed);
    assert_eq!(d.root_cause.unwrap().kind, "pid-in-use");
    assert_eq!(d.logs[0].status, LogStatus::Failed);
}

#[test]
fn no_status_and_no_error_is_incomplete_not_a_guess() {
    let d = trap("no-status-no-error.log");
    assert_eq!(d.verdict, Verdict::Incomplete);
    assert!(d.root_cause.is_none());
}

#[test]
fn interleaved_tasks_root_is_the_first_error_in_the_file() {
    let d = trap("interleaved-tasks.log");
    let root = d.root_cause.clone().unwrap();
    assert_eq!(root.kind, "file-missing");
    let related: Vec<_> = d.findings.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(related, vec!["tty-index-busy"]);
    // The root's context shows the other task's preceding line.
    assert!(
        root.evidence
            .iter()
            .any(|e| !e.key && e.text.contains("ptmx opened"))
    );
}

#[test]
fn unknown_first_error_is_unknown_with_relevant_lines_even_if_a_known_kind_follows() {
    let d = trap("unknown-error.log");
    assert_eq!(d.verdict, Verdict::Unknown);
    let root = d.root_cause.clone().unwrap();
    assert_eq!(root.kind, "unknown");
    assert!(
        root.evidence[root.evidence.len() - 1]
            .text
            .contains("Can't dump packet socket")
    );
    assert!(
        d.relevant
            .iter()
            .any(|e| e.key && e.text.contains("packet socket with rings"))
    );
    assert!(
        d.relevant
            .iter()
            .any(|e| !e.key && e.text.contains("Dumping packet socket fd 7"))
    );
    // The known kind after it is reported, but not as the root cause.
    assert_eq!(d.findings[0].kind, "shell-job-dangling-tty");
    assert_eq!(d.findings[0].role, Role::Related);
}

#[test]
fn only_followups_is_unknown() {
    let d = trap("followups-only.log");
    assert_eq!(d.verdict, Verdict::Unknown);
    assert_eq!(d.root_cause.unwrap().kind, "unknown");
    assert!(d.relevant.iter().any(|e| e.text.contains("Dumping FAILED")));
}

#[test]
fn misleading_zombie_wording_is_a_ptrace_denial() {
    let d = trap("misleading-wording.log");
    let root = d.root_cause.unwrap();
    assert_eq!(root.kind, "ptrace-seize-denied");
    assert!(
        root.evidence
            .iter()
            .any(|e| e.text.contains("zombie found while seizing"))
    );
}

#[test]
fn cut_pie_lines_are_joined_and_numbered_by_their_first_line() {
    let d = diagnose(common::fixtures().join("criu/vdso-image-mismatch.log"));
    let root = d.root_cause.unwrap();
    assert_eq!(root.kind, "vdso-image-mismatch");
    let key = root.evidence.iter().find(|e| e.key).unwrap();
    assert!(
        key.text.ends_with("Can't find vDSO area in image"),
        "{key:?}"
    );
    let text =
        std::fs::read_to_string(common::fixtures().join("criu/vdso-image-mismatch.log")).unwrap();
    let n = text
        .lines()
        .position(|l| l.contains("Can't find vDSO >"))
        .unwrap() as u64
        + 1;
    assert_eq!(key.line, n);
}

#[test]
fn a_run_directory_reads_dump_then_restore_then_dmesg() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let f = common::fixtures();
    std::fs::copy(
        f.join("traps/harmless-errors-success.log"),
        logs.join("dump.log"),
    )
    .unwrap();
    std::fs::copy(f.join("criu/pid-in-use.log"), logs.join("restore.log")).unwrap();
    std::fs::copy(
        f.join("dmesg/dmesg-segfault.txt"),
        logs.join("dmesg-after-reboot.txt"),
    )
    .unwrap();
    std::fs::write(logs.join("ferry.log"), "{\"Error (\": 1}\n").unwrap();
    let d = ferry::diagnose::diagnose_run_logs(&logs);
    assert_eq!(d.verdict, Verdict::Diagnosed);
    let paths: Vec<_> = d.logs.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "logs/dump.log",
            "logs/restore.log",
            "logs/dmesg-after-reboot.txt"
        ]
    );
    let root = d.root_cause.unwrap();
    assert_eq!(
        (root.kind.as_str(), root.log.as_str()),
        ("pid-in-use", "logs/restore.log")
    );
    assert_eq!(d.findings[0].kind, "dmesg-segfault");
}
