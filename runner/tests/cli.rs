//! The real `ferry` binary: diagnose, report and pull, on good bundles and
//! on hostile ones (tar slip, symlink escape, absolute path, gzip bomb,
//! truncated gzip, manifest hash mismatch).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{Ferry, fixtures};
use ferry_uploaders::{BundleOptions, Manifest, write_bundle};
use sha2::{Digest, Sha256};

/// A run directory like the one a failed trip leaves.
fn run_dir(root: &Path, restore_fixture: &str) -> PathBuf {
    let run = root.join("run");
    let logs = run.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::copy(
        fixtures().join("traps/harmless-errors-success.log"),
        logs.join("dump.log"),
    )
    .unwrap();
    std::fs::copy(fixtures().join(restore_fixture), logs.join("restore.log")).unwrap();
    std::fs::copy(
        fixtures().join("dmesg/dmesg-segfault.txt"),
        logs.join("dmesg-after-reboot.txt"),
    )
    .unwrap();
    let state = serde_json::json!({
        "run_id": "20261203T120000Z-abc123", "host": "ci-runner-7",
        "kernel_before": "6.1.0-28-amd64", "kernel_after": null,
        "outcome": {"result": "failed"},
        "phases": [
            {"name": "preflight", "result": "ok", "boot_id": "11111111-a", "start_unix_nano": 1_000_000_000u64, "end_unix_nano": 1_400_000_000u64},
            {"name": "dump", "result": "ok", "boot_id": "11111111-a", "start_unix_nano": 2_000_000_000u64, "end_unix_nano": 4_000_000_000u64},
            {"name": "handoff", "result": "ok", "boot_id": "11111111-a", "start_unix_nano": 4_000_000_000u64, "end_unix_nano": 4_500_000_000u64},
            {"name": "restore", "result": "failed", "boot_id": "22222222-b", "start_unix_nano": 30_000_000_000u64, "end_unix_nano": 31_000_000_000u64, "error": "criu restore failed"}
        ]
    });
    std::fs::write(
        run.join("state.json"),
        serde_json::to_vec_pretty(&state).unwrap(),
    )
    .unwrap();
    run
}

fn bundle_of(run: &Path, dest: &Path) -> PathBuf {
    write_bundle(
        dest,
        BundleOptions::default(),
        serde_json::json!({"run_id": "x"}),
        |w| {
            w.add_path("state.json", &run.join("state.json"))?;
            w.add_dir("logs", &run.join("logs"))
        },
    )
    .unwrap();
    dest.to_path_buf()
}

#[test]
fn diagnose_a_log_human_and_json() {
    Ferry::new()
        .arg("diagnose")
        .arg(fixtures().join("criu/pid-in-use.log"))
        .run()
        .code(1)
        .stdout_has("root cause: pid-in-use")
        .stdout_has("remedy: Restore in a fresh pid namespace")
        .stdout_has("Can't fork for 15047: File exists");
    let r = Ferry::new()
        .arg("diagnose")
        .arg("--json")
        .arg(fixtures().join("criu/ghost-limit.log"))
        .run()
        .code(1);
    let j = r.json();
    assert_eq!(j["verdict"], "diagnosed");
    assert_eq!(j["root_cause"]["kind"], "ghost-limit");
    assert_eq!(j["logs"][0]["status"], "failed");
}

#[test]
fn diagnose_a_successful_log_exits_0() {
    Ferry::new()
        .arg("diagnose")
        .arg(fixtures().join("traps/harmless-errors-success.log"))
        .run()
        .code(0)
        .stdout_has("no CRIU log shows a failure");
}

#[test]
fn diagnose_unknown_shows_relevant_lines_without_guessing() {
    Ferry::new()
        .arg("diagnose")
        .arg(fixtures().join("traps/unknown-error.log"))
        .run()
        .code(1)
        .stdout_has("root cause: unknown")
        .stdout_has("Can't dump packet socket with rings")
        .stdout_lacks("root cause: shell-job");
}

#[test]
fn diagnose_missing_input_names_it() {
    Ferry::new()
        .arg("diagnose")
        .arg("/nonexistent/dump.log")
        .run()
        .code(2)
        .stderr_has("/nonexistent/dump.log");
}

/// Regression: an empty file or one that is not a CRIU log at all was
/// reported as a CRIU log cut short (exit 1), as if criu had been killed.
#[test]
fn diagnose_refuses_what_is_not_a_criu_log() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("dump.log");
    std::fs::write(&empty, "").unwrap();
    Ferry::new()
        .arg("diagnose")
        .arg(&empty)
        .run()
        .code(2)
        .stderr_has("is empty");
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "hello\nError was here\n").unwrap();
    Ferry::new()
        .arg("diagnose")
        .arg("--json")
        .arg(&notes)
        .run()
        .code(2)
        .stderr_has("does not look like a CRIU log");
    // Regressions: /dev/zero was read forever; the report page (which
    // quotes CRIU lines) was read as a log cut short, exit 1.
    Ferry::new()
        .arg("diagnose")
        .arg("/dev/zero")
        .run()
        .code(2)
        .stderr_has("/dev/zero is not a regular file");
    let page = tmp
        .path()
        .join("h-20261203T120000Z-abc123-dump-failed.report.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html>\n<html><body><pre>(00.000001) Error (criu/cr-dump.c:1): x</pre></body></html>\n",
    )
    .unwrap();
    Ferry::new()
        .arg("diagnose")
        .arg(&page)
        .run()
        .code(2)
        .stderr_has("is a report page (HTML), not a log");
    // Review: a BOM and a browser's comment before the tag got past it.
    std::fs::write(
        &page,
        "\u{feff}<!-- saved from url=(0014)about:internet -->\n<html><pre>(00.000001) Error (criu/cr-dump.c:1): x\n(00.2) Dumping finished successfully</pre></html>\n",
    )
    .unwrap();
    Ferry::new()
        .arg("diagnose")
        .arg(&page)
        .run()
        .code(2)
        .stderr_has("is a report page (HTML), not a log");
    // Inside a run directory an empty log is evidence: criu died at once.
    let run = tmp.path().join("run");
    std::fs::create_dir_all(run.join("logs")).unwrap();
    std::fs::write(run.join("logs/dump.log"), "").unwrap();
    Ferry::new()
        .arg("diagnose")
        .arg(&run)
        .run()
        .code(1)
        .stdout_has("is empty: criu died before writing its first line")
        // Regression: the headline said only "a log ends without its
        // status line"; the real finding was under "logs read:".
        .stdout_has("criu died before writing the first line of ")
        .stdout_has("logs/dump.log (it is empty): read dmesg");
    // A real log cut before its status line is still a finding, exit 1.
    let cut = tmp.path().join("restore.log");
    std::fs::write(
        &cut,
        "(00.000012) Version: 3.17.1 (gitid 0)\n(00.000300) cpu: x\n",
    )
    .unwrap();
    Ferry::new()
        .arg("diagnose")
        .arg(&cut)
        .run()
        .code(1)
        .stdout_has("without its status line");
}

/// Regression: terminal control sequences in a log line reached the
/// terminal (a `\r\x1b[K` could hide the real error and print a fake one).
#[test]
fn diagnose_shows_control_characters_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("restore.log");
    std::fs::write(
        &log,
        "(00.000001) Version: 3.17.1 (gitid 0)\n(00.100000) Error (criu/cr-restore.c:1234): real error\r\x1b[Kfake line\x1b]0;PWNED\x07\n(00.200000) Error (criu/cr-restore.c:2345): Restoring FAILED.\n",
    )
    .unwrap();
    let r = Ferry::new().arg("diagnose").arg(&log).run().code(1);
    let out = r.stdout();
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert!(out.contains("real error\\r\\x1b[Kfake line"), "{out}");
    // Review: a newline in a log's file name forged a line of the report.
    let forged = tmp.path().join("restore\nroot cause: FORGED.log");
    std::fs::copy(&log, &forged).unwrap();
    let r = Ferry::new().arg("diagnose").arg(&forged).run().code(1);
    let out = r.stdout();
    assert!(
        !out.lines().any(|l| l.starts_with("root cause: FORGED")),
        "{out}"
    );
    assert!(out.contains("restore\\nroot cause: FORGED.log"), "{out}");
}

/// `ferry … --json | head`: the reader is gone before ferry writes. It
/// ends as a program killed by SIGPIPE would (141), without an error line
/// (review: serde_json hid the broken pipe, it printed an error, exit 2).
#[test]
fn a_reader_that_went_away_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("dump.log");
    std::fs::write(&log, DUMP).unwrap();
    for json in [true, false] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.arg("diagnose");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg(&log).stdout(writer).output().unwrap();
        assert_eq!(out.status.code(), Some(141), "json {json}: {out:?}");
        assert!(out.stderr.is_empty(), "json {json}: {out:?}");
    }
}

#[test]
fn diagnose_and_report_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), "criu/tty-index-busy.log");
    let b = bundle_of(
        &run,
        &tmp.path()
            .join("h-20261203T120000Z-abc123-restore-failed.tar.gz"),
    );
    Ferry::new()
        .arg("diagnose")
        .arg(&b)
        .run()
        .code(1)
        .stdout_has("root cause: tty-index-busy")
        .stdout_has("logs/restore.log:")
        .stdout_has("dmesg-segfault");
    // Regression: with several inputs a bundle's logs were named by their
    // scratch copy in /tmp, deleted by then.
    let plain = tmp.path().join("dump.log");
    std::fs::write(&plain, DUMP).unwrap();
    Ferry::new()
        .arg("diagnose")
        .arg(&b)
        .arg(&plain)
        .run()
        .code(1)
        .stdout_has(&format!("{}/logs/restore.log:", b.display()))
        .stdout_lacks("ferry-bundle-");
    let html = tmp.path().join("report.html");
    Ferry::new()
        .arg("report")
        .arg(&b)
        .arg("--html")
        .arg(&html)
        .run()
        .code(0)
        .stdout_has("boot gap: 25.5 s")
        .stdout_has("restore          failed")
        .stdout_has("diagnosis: tty-index-busy at logs/restore.log:");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("tty-index-busy"));
    // Regression: --html over the report's own input (the bundle, or the
    // run's state.json) replaced it with the page.
    let before = std::fs::read(&b).unwrap();
    Ferry::new()
        .arg("report")
        .arg(&b)
        .arg("--html")
        .arg(&b)
        .run()
        .code(2)
        .stderr_has("would write over the report's own input");
    assert_eq!(std::fs::read(&b).unwrap(), before);
    // Review: through a symlink or a hard link to the bundle it was still
    // overwritten; the page now replaces the link, not what it points to.
    let sym = tmp.path().join("sym.html");
    std::os::unix::fs::symlink(&b, &sym).unwrap();
    let hard = tmp.path().join("hard.html");
    std::fs::hard_link(&b, &hard).unwrap();
    for link in [&sym, &hard] {
        Ferry::new()
            .arg("report")
            .arg(&b)
            .arg("--html")
            .arg(link)
            .run()
            .code(0);
        assert!(std::fs::read_to_string(link).unwrap().contains("<svg"));
    }
    assert_eq!(
        std::fs::read(&b).unwrap(),
        before,
        "the bundle is untouched"
    );
    Ferry::new()
        .arg("report")
        .arg(&run)
        .arg("--html")
        .arg(run.join("state.json"))
        .run()
        .code(2)
        .stderr_has("would write over the report's own input");
    // Regression: a stdout that cannot be written was a panic (exit 101).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("report")
        .arg(&run)
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write to stdout"));
    // Regressions: a log file given to report was said to have no
    // state.json; a state.json that is a directory was said to be absent.
    let log = tmp.path().join("notes.log");
    std::fs::write(&log, "x\n").unwrap();
    Ferry::new()
        .arg("report")
        .arg(&log)
        .run()
        .code(2)
        .stderr_has("is neither a bundle (.tar.gz) nor a run directory; for a log file use `ferry diagnose`");
    let odd = tmp.path().join("odd-run");
    std::fs::create_dir_all(odd.join("state.json")).unwrap();
    Ferry::new()
        .arg("report")
        .arg(&odd)
        .run()
        .code(2)
        .stderr_has("cannot read")
        .stderr_has("state.json");
    // Regression: an unwritable --html printed the whole timeline first.
    let r = Ferry::new()
        .arg("report")
        .arg(&run)
        .arg("--html")
        .arg(tmp.path().join("no-such-dir/report.html"))
        .run()
        .code(2)
        .stderr_has("no-such-dir/report.html; give --html a path in a writable directory");
    assert_eq!(r.stdout(), "");
    // And straight from the run directory.
    Ferry::new()
        .arg("report")
        .arg(&run)
        .run()
        .code(0)
        .stdout_has("run 20261203T120000Z-abc123 on ci-runner-7: failed");
}

#[test]
fn pull_lists_filters_verifies_and_extracts() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let run = run_dir(tmp.path(), "criu/pid-in-use.log");
    bundle_of(
        &run,
        &store.join("ci-a-20261203T120000Z-abc123-restore-failed.tar.gz"),
    );
    bundle_of(
        &run,
        &store.join("ci-b-20261204T120000Z-def456-finish-succeeded.tar.gz"),
    );
    std::fs::write(store.join("notes.txt"), "not a bundle").unwrap();
    let r = Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--json")
        .run()
        .code(0);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let r = Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--json")
        .arg("--result")
        .arg("failed")
        .run()
        .code(0);
    let j = r.json();
    assert_eq!(j.as_array().unwrap().len(), 1);
    assert_eq!(j[0]["host"], "ci-a");
    assert_eq!(j[0]["run_id"], "20261203T120000Z-abc123");
    let r = Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--json")
        .arg("--host")
        .arg("ci-b")
        .run()
        .code(0);
    assert_eq!(r.json()[0]["stage"], "finish");
    let r = Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--json")
        .arg("--since")
        .arg("1h")
        .arg("--newest")
        .arg("1")
        .run()
        .code(0);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let out = tmp.path().join("out");
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--run")
        .arg("20261203T120000Z")
        .arg("--extract")
        .arg(&out)
        .run()
        .code(0)
        .stdout_has("files verified");
    let extracted = out.join("ci-a-20261203T120000Z-abc123-restore-failed");
    assert!(extracted.join("logs/restore.log").is_file());
    Ferry::new()
        .arg("diagnose")
        .arg(&extracted)
        .run()
        .code(1)
        .stdout_has("pid-in-use");
    Ferry::new()
        .arg("pull")
        .arg("--backend")
        .arg("ftp")
        .arg("--dir")
        .arg(&store)
        .run()
        .code(2)
        .stderr_has("unknown backend \"ftp\"");
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--since")
        .arg("yesterday")
        .run()
        .code(2)
        .stderr_has("--since");
    // Regression: --newest 0 listed nothing and said no bundle matched.
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--newest")
        .arg("0")
        .run()
        .code(2)
        .stderr_has("--newest");
    // Regressions: a mistyped store, an unknown result and a --dir with
    // another backend configured each looked like an empty store (exit 0).
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(tmp.path().join("no-such-store"))
        .run()
        .code(2)
        .stderr_has("no-such-store is not a directory");
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--result")
        .arg("bogus")
        .run()
        .code(2)
        .stderr_has("called_off");
    let r = Ferry::new()
        .env("FERRY_SHIP_BACKENDS", "s3")
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--json")
        .run()
        .code(0);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
}

// ---------------------------------------------------------------- github

/// `ferry pull` with the environment of a person holding a token, and
/// nothing of the machine's own GitHub variables.
fn github_pull(fake: &ferry_tests::fakes::github::GithubFake) -> Ferry {
    use ferry_tests::fakes::github::{REPO, REST_TOKEN};
    let mut f = Ferry::new();
    for v in ferry_uploaders::backends::github::ENV_VARS {
        f = f.env_remove(v);
    }
    f.env("GITHUB_TOKEN", REST_TOKEN)
        .env("FERRY_SHIP_GITHUB_REPOSITORY", REPO)
        .env("FERRY_SHIP_GITHUB_API_URL", fake.api_url())
        .arg("pull")
        .arg("--backend")
        .arg("github")
}

#[test]
fn pull_from_github_artifacts_raw_and_zipped() {
    use ferry_tests::fakes::github::{GithubFake, REST_TOKEN, Seed, zip_holding};
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), "criu/pid-in-use.log");
    let raw = "ci-a-20261203T120000Z-abc123-restore-failed.tar.gz";
    let zipped = "ci-b-20261204T120000Z-def456-finish-succeeded.tar.gz";
    let fake = GithubFake::start().unwrap();
    for (name, how) in [(raw, Seed::gzip()), (zipped, Seed::zip())] {
        let data = std::fs::read(bundle_of(&run, &tmp.path().join(name))).unwrap();
        let body = if name == zipped {
            zip_holding(name, &data)
        } else {
            data
        };
        fake.seed(&format!("ferry-{name}"), &body, how);
    }
    fake.seed("coverage-report", b"PK\x03\x04", Seed::zip());

    let r = github_pull(&fake).arg("--json").run().code(0);
    let keys: Vec<_> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&raw.to_string()) && keys.contains(&zipped.to_string()));
    let out = tmp.path().join("out");
    github_pull(&fake)
        .arg("--extract")
        .arg(&out)
        .run()
        .code(0)
        .stdout_has(&format!("{raw}: "))
        .stdout_has(&format!("{zipped}: "))
        .stdout_has("files verified")
        .output_lacks(REST_TOKEN);
    for name in [raw, zipped] {
        let dir = out.join(name.strip_suffix(".tar.gz").unwrap());
        assert!(dir.join("logs/restore.log").is_file(), "{name}");
    }
    // The blob host never saw the token.
    assert!(
        fake.blob
            .seen()
            .iter()
            .all(|s| s.headers.iter().all(|(k, _)| k != "authorization"))
    );
}

#[test]
fn pull_from_github_without_a_token_names_what_to_set() {
    let fake = ferry_tests::fakes::github::GithubFake::start().unwrap();
    github_pull(&fake)
        .env_remove("GITHUB_TOKEN")
        .run()
        .code(2)
        .stderr_has("github backend")
        .stderr_has("GITHUB_TOKEN")
        .stderr_has("ACTIONS_RUNTIME_TOKEN");
    github_pull(&fake)
        .env("GITHUB_TOKEN", "ghp_NotTheRightOne42")
        .run()
        .code(2)
        .stderr_has("HTTP 401: Bad credentials")
        .output_lacks("ghp_NotTheRightOne42");
}

// ---------------------------------------------------------------- dropbox

/// `ferry pull --backend dropbox`, the fake Dropbox's URLs and the token
/// given through the environment as a CI job would.
#[test]
fn pull_from_dropbox() {
    use ferry_tests::fakes::dropbox::FakeDropbox;
    const TOKEN: &str = "sl.CLI-TEST-TOKEN-0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    fake.add_token(TOKEN);
    let run = run_dir(tmp.path(), "criu/pid-in-use.log");
    for name in [
        "ci-a-20261203T120000Z-abc123-restore-failed.tar.gz",
        "ci-b-20261204T120000Z-def456-finish-succeeded.tar.gz",
    ] {
        let b = bundle_of(&run, &tmp.path().join(name));
        fake.put_file(&format!("/ci/bundles/{name}"), &std::fs::read(b).unwrap());
    }
    fake.put_file("/ci/bundles/notes.txt", b"not a bundle");
    let ferry = || {
        Ferry::new()
            .env_remove("DROPBOX_REFRESH_TOKEN")
            .env("DROPBOX_TOKEN", TOKEN)
            .env("FERRY_SHIP_DROPBOX_FOLDER", "/ci/bundles")
            .env("FERRY_SHIP_DROPBOX_API_URL", fake.api_url())
            .env("FERRY_SHIP_DROPBOX_CONTENT_URL", fake.content_url())
            .arg("pull")
            .arg("--backend")
            .arg("dropbox")
    };
    let r = ferry().arg("--json").run().code(0);
    let j = r.json();
    let mut hosts: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["host"].as_str().unwrap())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["ci-a", "ci-b"], "{j}");
    let out = tmp.path().join("out");
    let r = ferry()
        .arg("--result")
        .arg("failed")
        .arg("--extract")
        .arg(&out)
        .run()
        .code(0)
        .stdout_has("files verified");
    assert!(!r.stdout().contains(TOKEN) && !r.stderr().contains(TOKEN));
    let extracted = out.join("ci-a-20261203T120000Z-abc123-restore-failed");
    assert!(extracted.join("logs/restore.log").is_file());
    assert!(
        !out.join("ci-b-20261204T120000Z-def456-finish-succeeded")
            .exists()
    );

    // A stored bundle damaged in Dropbox: refused, not extracted.
    let name = "ci-c-20261205T120000Z-aaa111-dump-failed.tar.gz";
    let mut bytes = std::fs::read(
        tmp.path()
            .join("ci-a-20261203T120000Z-abc123-restore-failed.tar.gz"),
    )
    .unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fake.put_file(&format!("/ci/bundles/{name}"), &bytes);
    ferry()
        .arg("--host")
        .arg("ci-c")
        .arg("--extract")
        .arg(&out)
        .run()
        .code(2);
    assert!(
        !out.join("ci-c-20261205T120000Z-aaa111-dump-failed")
            .exists()
    );

    // No credentials: a clear error naming what to set, exit 2.
    Ferry::new()
        .env_remove("DROPBOX_TOKEN")
        .env_remove("DROPBOX_REFRESH_TOKEN")
        .arg("pull")
        .arg("--backend")
        .arg("dropbox")
        .run()
        .code(2)
        .stderr_has("DROPBOX_REFRESH_TOKEN, DROPBOX_APP_KEY and DROPBOX_APP_SECRET");
    // An expired token: named, with the fix, and the token not printed.
    fake.expire_tokens();
    let r = ferry().run().code(2).stderr_has("Dropbox token expired");
    assert!(!r.stderr().contains(TOKEN), "{}", r.stderr());
}

// ---------------------------------------------------------------- hostile archives

enum E<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// A tar.gz written byte by byte (the tar crate refuses the hostile names),
/// with a manifest that lists every regular file with its true hash unless
/// `lie` names one to misstate.
fn hostile(path: &Path, entries: &[E<'_>], lie: Option<&str>) {
    let mut tar = Vec::new();
    let mut files = Vec::new();
    let mut put = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    };
    for e in entries {
        match e {
            E::File(n, d) => {
                put(n, tar::EntryType::Regular, d, None);
                let mut sha = hex::encode(Sha256::digest(d));
                if lie == Some(*n) {
                    sha = "0".repeat(64);
                }
                files.push(
                    serde_json::json!({"path": n, "size": d.len(), "sha256": sha,
                    "truncated": false, "redacted": 0, "source_size": d.len()}),
                );
            }
            E::Symlink(n, t) => put(n, tar::EntryType::Symlink, b"", Some(t)),
        }
    }
    let manifest = serde_json::json!({"format": 1, "ferry_version": "0.1.0",
        "created": "2026-12-03T00:00:00Z", "run": {}, "files": files});
    let _: Manifest = serde_json::from_value(manifest.clone()).unwrap();
    put(
        "manifest.json",
        tar::EntryType::Regular,
        &serde_json::to_vec(&manifest).unwrap(),
        None,
    );
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap();
}

fn store_with(tmp: &Path, name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    let store = tmp.join("store");
    std::fs::create_dir_all(&store).unwrap();
    build(&store.join(name));
    store
}

/// A bundle of `run` at `p`, cut in half (a truncated gzip).
fn truncated_bundle_of(run: &Path, p: &Path) {
    bundle_of(run, p);
    let bytes = std::fs::read(p).unwrap();
    std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap();
}

const DUMP: &[u8] = b"(00.000001) Error (criu/files-reg.c:945): Can't dump ghost file /tmp/x of 16777216 size, increase limit\n";

fn pull_refuses(tmp: &Path, store: &Path, expect: &str) {
    let out = tmp.join("out");
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(store)
        .arg("--extract")
        .arg(&out)
        .arg("--max-extract-mib")
        .arg("16")
        .run()
        .code(2)
        .stderr_has(expect);
}

#[test]
fn tar_slip_is_refused_by_pull_and_diagnose() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "h-20261203T120000Z-abc123-dump-failed.tar.gz";
    let store = store_with(tmp.path(), name, |p| {
        hostile(
            p,
            &[
                E::File("logs/dump.log", DUMP),
                E::File("../../escaped.txt", b"pwned"),
            ],
            None,
        )
    });
    pull_refuses(tmp.path(), &store, "`..`");
    // Regression: logs/dump.log, before the bad entry, stayed extracted.
    let out = tmp.path().join("out");
    assert!(!out.join("h-20261203T120000Z-abc123-dump-failed").exists());
    assert!(!out.join(name).exists(), "the refused download is deleted");
    assert!(store.join(name).is_file(), "the store keeps its copy");
    Ferry::new()
        .arg("diagnose")
        .arg(store.join(name))
        .run()
        .code(2)
        .stderr_has("refusing to extract");
    assert!(!tmp.path().join("escaped.txt").exists());
    assert!(!tmp.path().parent().unwrap().join("escaped.txt").exists());
}

#[test]
fn absolute_path_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("abs-target.txt");
    let abs = target.to_string_lossy().into_owned();
    let store = store_with(
        tmp.path(),
        "h-20261203T120000Z-abc123-dump-failed.tar.gz",
        |p| hostile(p, &[E::File(&abs, b"pwned")], None),
    );
    pull_refuses(tmp.path(), &store, "absolute");
    assert!(!target.exists());
}

#[test]
fn symlink_escape_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_with(
        tmp.path(),
        "h-20261203T120000Z-abc123-dump-failed.tar.gz",
        |p| {
            hostile(
                p,
                &[E::Symlink("logs", "/etc"), E::File("logs/dump.log", DUMP)],
                None,
            )
        },
    );
    // Not in the manifest, so verification already refuses it; the error
    // names the object in the store, not the deleted download (regression).
    pull_refuses(
        tmp.path(),
        &store,
        "h-20261203T120000Z-abc123-dump-failed.tar.gz in the dir store was refused and its download deleted",
    );
    pull_refuses(tmp.path(), &store, "does not match its manifest");
    assert!(
        !tmp.path()
            .join("out")
            .join("h-20261203T120000Z-abc123-dump-failed")
            .exists()
    );
}

#[test]
fn gzip_bomb_is_refused_by_the_size_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 32 << 20];
    let store = store_with(
        tmp.path(),
        "h-20261203T120000Z-abc123-dump-failed.tar.gz",
        |p| hostile(p, &[E::File("logs/dump.log", &zeros)], None),
    );
    assert!(
        std::fs::metadata(store.join("h-20261203T120000Z-abc123-dump-failed.tar.gz"))
            .unwrap()
            .len()
            < 1 << 20
    );
    pull_refuses(
        tmp.path(),
        &store,
        "exceeds the limit of 16777216; if the bundle is trusted, raise the limit (`ferry pull --max-extract-mib`)",
    );
}

#[test]
fn truncated_gzip_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), "criu/pid-in-use.log");
    let name = "h-20261203T120000Z-abc123-dump-failed.tar.gz";
    let store = store_with(tmp.path(), name, |p| truncated_bundle_of(&run, p));
    pull_refuses(tmp.path(), &store, "truncated or corrupt");
    Ferry::new()
        .arg("diagnose")
        .arg(store.join(name))
        .run()
        .code(2)
        .stderr_has("truncated or corrupt");
    assert!(
        !tmp.path().join("out").join(name).exists(),
        "a bad download is not kept"
    );
}

/// Regression: `--extract` pointed at the dir store itself deleted the
/// store's only copy of every bundle it refused (the download was the
/// stored object); and two pulls into one directory clashed.
#[test]
fn pull_never_writes_over_a_file_it_finds() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), "criu/pid-in-use.log");
    let bad = "h-20261204T120000Z-bad999-dump-failed.tar.gz";
    let store = store_with(tmp.path(), bad, |p| truncated_bundle_of(&run, p));
    let stored = std::fs::read(store.join(bad)).unwrap();
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--extract")
        .arg(&store)
        .run()
        .code(2)
        .stderr_has("exists already")
        .stderr_has("choose a new --extract directory");
    assert_eq!(std::fs::read(store.join(bad)).unwrap(), stored);
}

/// A bad bundle among good ones: the good ones are still extracted, the
/// bad one is named, the pull fails (it stopped at the first bad bundle).
#[test]
fn pull_extract_goes_past_a_bad_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), "criu/pid-in-use.log");
    let bad = "h-20261204T120000Z-bad999-dump-failed.tar.gz";
    let store = store_with(tmp.path(), bad, |p| truncated_bundle_of(&run, p));
    let good = "h-20261203T120000Z-abc123-restore-failed.tar.gz";
    bundle_of(&run, &store.join(good));
    let out = tmp.path().join("out");
    Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .arg("--extract")
        .arg(&out)
        .run()
        .code(2)
        .stderr_has(&format!("{bad} in the dir store was refused"))
        .stderr_has("1 of 2 bundles could not be pulled")
        .stdout_has("files verified");
    assert!(
        out.join("h-20261203T120000Z-abc123-restore-failed/logs/restore.log")
            .is_file()
    );
    assert!(!out.join(bad).exists());
    // The listing is a table with a header, newest first.
    let r = Ferry::new()
        .arg("pull")
        .arg("--dir")
        .arg(&store)
        .run()
        .code(0);
    let listing = r.stdout();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("SHIPPED (UTC)"), "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("failed") || l.starts_with("SHIPPED"))
    );
}

#[test]
fn manifest_hash_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "h-20261203T120000Z-abc123-dump-failed.tar.gz";
    let store = store_with(tmp.path(), name, |p| {
        hostile(p, &[E::File("logs/dump.log", DUMP)], Some("logs/dump.log"))
    });
    pull_refuses(tmp.path(), &store, "content differs for \"logs/dump.log\"");
    Ferry::new()
        .arg("diagnose")
        .arg(store.join(name))
        .run()
        .code(2)
        .stderr_has("does not match its manifest");
}

/// `ferry pull --backend s3` against a real S3 server (s3s-fs), configured
/// only through the environment: lists the bundles under the prefix,
/// downloads, verifies and extracts them; wrong credentials fail with the
/// variable to fix and without the secret.
#[test]
fn pull_from_s3_lists_and_extracts() {
    use ferry_tests::s3s::{ACCESS_KEY, S3sFs, SECRET_KEY};
    use ferry_uploaders::{Backend, S3Backend, S3Config};
    let Some(server) =
        S3sFs::start_or_skip("pull_from_s3_lists_and_extracts", &["bundles"]).unwrap()
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), "criu/pid-in-use.log");
    let name = "ci-a-20261203T120000Z-abc123-restore-failed.tar.gz";
    let bundle = bundle_of(&run, &tmp.path().join(name));
    let cfg = S3Config {
        endpoint: server.url(),
        bucket: "bundles".into(),
        prefix: "ci".into(),
        ..S3Config::default()
    };
    let backend = S3Backend::from_env(&cfg, &server.env()).unwrap();
    backend.put(name, &bundle).unwrap();
    backend.put("notes.txt", &run.join("state.json")).unwrap();
    let ferry = || {
        Ferry::new()
            .env("FERRY_SHIP_BACKENDS", "s3")
            .env("FERRY_SHIP_S3_ENDPOINT", server.url())
            .env("FERRY_SHIP_S3_BUCKET", "bundles")
            .env("FERRY_SHIP_S3_PREFIX", "ci")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .arg("pull")
            .arg("--backend")
            .arg("s3")
    };
    let r = ferry()
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .arg("--json")
        .run()
        .code(0);
    let j = r.json();
    assert_eq!(j.as_array().unwrap().len(), 1, "{j}");
    assert_eq!(j[0]["key"], name);
    assert_eq!(j[0]["host"], "ci-a");
    let out = tmp.path().join("out");
    ferry()
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .arg("--extract")
        .arg(&out)
        .run()
        .code(0)
        .stdout_has(&format!("{name}: "))
        .stdout_has("files verified");
    let extracted = out.join(name.trim_end_matches(".tar.gz"));
    assert_eq!(
        std::fs::read(extracted.join("logs/restore.log")).unwrap(),
        std::fs::read(run.join("logs/restore.log")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join(name)).unwrap(),
        std::fs::read(&bundle).unwrap()
    );
    let r = ferry()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
        .run()
        .code(2)
        .stderr_has("SignatureDoesNotMatch")
        .stderr_has("AWS_SECRET_ACCESS_KEY");
    assert!(!r.stderr().contains("not-the-secret-0123456789"));
    ferry()
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .run()
        .code(2)
        .stderr_has("AWS_SECRET_ACCESS_KEY is not set");
}

// ---------------------------------------------------------------- config

/// Regression: `config check` said nothing of a destination that could
/// not take a bundle (S3 without a bucket, Dropbox without a token): the
/// trip found out at preflight.
#[test]
fn config_check_says_which_destinations_are_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let base = || {
        Ferry::new()
            .env("FERRY_SHIP_DIR", tmp.path())
            .env_remove("DROPBOX_TOKEN")
            .env_remove("DROPBOX_REFRESH_TOKEN")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .arg("config")
            .arg("check")
    };
    base()
        .env("FERRY_SHIP_BACKENDS", "dir,s3,dropbox")
        .run()
        .code(1)
        .stdout_has("# dir: ready")
        .stdout_has("# s3: not ready")
        .stdout_has("# dropbox: not ready")
        .stderr_has("set ship.s3.bucket")
        .stderr_has("DROPBOX_TOKEN");
    base()
        .env("FERRY_SHIP_BACKENDS", "dir,s3")
        .env("FERRY_SHIP_S3_BUCKET", "bundles")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-key")
        .run()
        .code(0)
        .stdout_has("# s3: ready")
        .output_lacks("not-a-real-secret-key");
}

/// Regression: a mistyped path was "no state.json", and a state.json that
/// is not ferry's printed an empty timeline with exit 0.
#[test]
fn report_names_a_missing_path_and_refuses_a_foreign_state() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    Ferry::new()
        .arg("report")
        .arg(&missing)
        .run()
        .code(2)
        .stderr_has("cannot read")
        .stderr_has("No such file or directory");
    std::fs::write(tmp.path().join("state.json"), "{}").unwrap();
    Ferry::new()
        .arg("report")
        .arg(tmp.path())
        .run()
        .code(2)
        .stderr_has("not a ferry run's state")
        .stdout_lacks("total");
}

/// Regressions: an empty FERRY_CONFIG was a clap usage error; an error
/// that quotes its cause printed the cause twice.
#[test]
fn config_path_from_the_environment() {
    Ferry::new()
        .env("FERRY_CONFIG", "")
        .arg("config")
        .arg("check")
        .run()
        .code(0)
        .stdout_has("[spool]");
    let r = Ferry::new()
        .env("FERRY_CONFIG", "/nonexistent/ferry.toml")
        .arg("config")
        .arg("check")
        .run()
        .code(2)
        .stderr_has("cannot read config /nonexistent/ferry.toml");
    assert_eq!(
        r.stderr().matches("No such file or directory").count(),
        1,
        "{}",
        r.stderr()
    );
}

/// Regression: a dir destination was "ready" whatever its permissions.
#[test]
fn config_check_finds_a_dir_this_user_cannot_write() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let locked = tmp.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ferry = if unsafe { libc::geteuid() } == 0 {
        // Root ignores modes: run as nobody a copy of the binary it can
        // execute, against a directory only root may write.
        let bin = tmp.path().join("ferry");
        std::fs::copy(env!("CARGO_BIN_EXE_ferry"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        Ferry::at(&bin).uid(65534, 65534).env("HOME", "/")
    } else {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        Ferry::new()
    };
    ferry
        .env("FERRY_SHIP_DIR", locked.join("bundles"))
        .env("FERRY_SHIP_BACKENDS", "dir")
        .arg("config")
        .arg("check")
        .run()
        .code(1)
        .stdout_has("# dir: not ready")
        .stderr_has("is not writable by this user");
}

/// Regression: a secret quoted in a setting (a token in the upgrade
/// command, a password in an endpoint) was printed by `config check` and
/// in errors as it was.
#[test]
fn config_check_and_errors_redact_secrets_quoted_in_settings() {
    let secret = "SuperSecretValue123";
    let r = Ferry::new()
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env(
            "FERRY_UPGRADE_COMMAND",
            format!("apt-get -y upgrade && echo {secret}"),
        )
        .env("FERRY_SHIP_BACKENDS", "s3")
        .env("FERRY_SHIP_S3_BUCKET", "b")
        .env(
            "FERRY_SHIP_S3_ENDPOINT",
            "http://u:EndpointPassword7@127.0.0.1:9",
        )
        .arg("config")
        .arg("check")
        .run()
        .code(1)
        .stdout_has("echo [REDACTED]")
        .stderr_has("is not usable");
    assert!(!r.stdout().contains(secret) && !r.stderr().contains(secret));
    // A password in a URL is a secret no variable names.
    let all = format!("{}{}", r.stdout(), r.stderr());
    assert!(
        !all.contains("EndpointPassword7") && all.contains("http://***@127.0.0.1:9"),
        "{all}"
    );
    let r = Ferry::new()
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("FERRY_CRIU_RESTORE_ATTEMPTS", secret)
        .arg("config")
        .arg("check")
        .run()
        .code(2)
        .stderr_has("FERRY_CRIU_RESTORE_ATTEMPTS");
    assert!(!r.stderr().contains(secret), "{}", r.stderr());
}
