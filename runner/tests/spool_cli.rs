//! The spool through the real binary: a destination that stays down (the
//! cap holds), two drains at once, a damaged entry, permission denied, a
//! full disk (a small tmpfs in a private mount namespace, so the host's
//! mounts never change), and the units `ferry install` writes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::Ferry;

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("ferry.toml"), "").unwrap();
        Env { tmp }
    }
    fn root(&self) -> &Path {
        self.tmp.path()
    }
    fn spool(&self) -> PathBuf {
        self.root().join("spool")
    }
    fn dest(&self) -> PathBuf {
        self.root().join("dest")
    }
    /// `ferry --config <empty> …` with the spool, destination and state
    /// directory here, no retry wait, and no job environment.
    fn ferry(&self) -> Ferry {
        self.ferry_at(Path::new(env!("CARGO_BIN_EXE_ferry")))
    }
    fn ferry_at(&self, program: &Path) -> Ferry {
        let mut f = Ferry::at(program)
            .arg("--config")
            .arg(self.root().join("ferry.toml"))
            .env("FERRY_SPOOL_DIR", self.spool())
            .env("FERRY_SHIP_DIR", self.dest())
            .env("FERRY_STATE_DIR", self.root().join("state"))
            .env("FERRY_SPOOL_RETRY_BUDGET_SECS", "0");
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") {
                f = f.env(&k, "");
            }
        }
        f
    }
    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.root().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
    fn entries(&self) -> Vec<serde_json::Value> {
        let r = self
            .ferry()
            .arg("spool")
            .arg("list")
            .arg("--json")
            .run()
            .code(0);
        r.json()["entries"].as_array().unwrap().clone()
    }
    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_destination_down_for_the_whole_test_keeps_entries_within_the_cap() {
    let env = Env::new();
    let secret = "sk-live-9f8e7d6c5b4a39281706";
    let down = |f: Ferry| {
        f.env("FERRY_TESTING_BACKEND_DOWN", "dir")
            .env("FERRY_SPOOL_MAX_ENTRIES", "3")
            .env("AWS_SECRET_ACCESS_KEY", secret)
    };
    let mut ids = Vec::new();
    for i in 0..5 {
        let f = env.file(&format!("b{i}.tar.gz"), format!("bundle {i}").as_bytes());
        let r = down(env.ferry())
            .arg("spool")
            .arg("add")
            .arg(&f)
            .run()
            .code(0);
        ids.push(r.stdout().trim().to_string());
        if i >= 3 {
            r.stderr_has("the size cap evicted");
        }
        down(env.ferry())
            .arg("ship")
            .run()
            .code(1)
            .stderr_has("not shipped to dir")
            .stderr_has("failed on purpose")
            .stderr_lacks(secret);
    }
    let entries = env.entries();
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        ["b2.tar.gz", "b3.tar.gz", "b4.tar.gz"],
        "the newest three stay"
    );
    // `spool add` entries are bundles, never expendable pages.
    assert!(entries.iter().all(|e| e["expendable"] == false));
    assert!(Env::files_in(&env.dest()).is_empty());
    // Each drain counted its attempt on the entries it found.
    let r = env
        .ferry()
        .arg("spool")
        .arg("show")
        .arg(&ids[2])
        .run()
        .code(0);
    r.stdout_has("dir: waiting (3 attempts so far)");
    // Nothing of the secret anywhere in the spool.
    let out = std::process::Command::new("grep")
        .args(["-r", secret])
        .arg(env.spool())
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Up again: what the cap kept goes out, once each.
    env.ferry()
        .arg("ship")
        .run()
        .code(0)
        .stderr_has("3 shipped, 0 waiting");
    assert_eq!(
        Env::files_in(&env.dest()),
        ["b2.tar.gz", "b3.tar.gz", "b4.tar.gz"]
    );
    assert_eq!(
        std::fs::read(env.dest().join("b3.tar.gz")).unwrap(),
        b"bundle 3"
    );
    assert!(env.entries().is_empty());
}

#[test]
fn two_drains_at_once_one_waits_or_says_who_holds_the_spool() {
    let env = Env::new();
    let f = env.file("b.tar.gz", b"only once");
    env.ferry().arg("spool").arg("add").arg(&f).run().code(0);
    // The first drain stops right before its put, holding the spool.
    let mut first = env
        .ferry()
        .env("FERRY_FAILPOINT", "drain.put.begin:1:pause")
        .arg("ship")
        .command();
    let mut child = first.stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the first drain ended early").unwrap();
        if line.contains("paused") {
            break;
        }
    }
    env.ferry()
        .arg("ship")
        .arg("--no-wait")
        .run()
        .code(2)
        .stderr_has(&format!("being drained by pid {pid} (ferry ship) since"));
    env.ferry()
        .arg("ship")
        .arg("--wait-secs")
        .arg("1")
        .run()
        .code(2)
        .stderr_has(&format!(
            "waiting for the spool: it is being drained by pid {pid}"
        ));
    // The first dies where it stood (a crash); the next drain ships.
    child.kill().unwrap();
    child.wait().unwrap();
    env.ferry()
        .arg("ship")
        .run()
        .code(0)
        .stderr_has("1 shipped");
    assert_eq!(Env::files_in(&env.dest()), ["b.tar.gz"]);
    assert_eq!(
        std::fs::read(env.dest().join("b.tar.gz")).unwrap(),
        b"only once"
    );
}

#[test]
fn a_damaged_entry_is_quarantined_never_shipped_and_dropped_only_by_id() {
    let env = Env::new();
    let f = env.file("b.tar.gz", b"the real bytes");
    let id = env
        .ferry()
        .arg("spool")
        .arg("add")
        .arg(&f)
        .run()
        .code(0)
        .stdout();
    let id = id.trim();
    std::fs::write(
        env.spool().join("entries").join(id).join("data"),
        b"the rEal bytes",
    )
    .unwrap();
    env.ferry()
        .arg("ship")
        .run()
        .code(1)
        .stderr_has(&format!(
            "spool entry {id} is damaged and was moved to quarantine"
        ))
        .stderr_has("does not match its entry.json")
        .stderr_has("1 damaged entries are in quarantine");
    assert!(
        Env::files_in(&env.dest()).is_empty(),
        "damaged bytes must not be shipped"
    );
    env.ferry()
        .arg("spool")
        .arg("list")
        .run()
        .code(0)
        .stdout_has(&format!("{id}  quarantined"));
    env.ferry()
        .arg("spool")
        .arg("show")
        .arg(id)
        .run()
        .code(0)
        .stdout_has("quarantined")
        .stdout_has("does not match");
    env.ferry().arg("spool").arg("drop").run().code(2);
    env.ferry()
        .arg("spool")
        .arg("drop")
        .arg(id)
        .run()
        .code(0)
        .stderr_has(&format!("dropped quarantined entry {id}"));
    env.ferry().arg("ship").run().code(0);
    env.ferry()
        .arg("spool")
        .arg("show")
        .arg(id)
        .run()
        .code(2)
        .stderr_has("has no entry");
}

/// A permanent failure parks the entry at once: the first `ferry ship`
/// already says so and what to run once fixed (it said only "not shipped",
/// the parked line came one drain later), and the error says what to fix.
#[test]
fn a_permanent_failure_says_parked_at_the_first_drain() {
    let env = Env::new();
    let not_a_dir = env.file("not-a-dir", b"x");
    let bundle = env.file("b.tar.gz", b"bundle");
    let ship_to_file = |f: Ferry| f.env("FERRY_SHIP_DIR", not_a_dir.join("sub"));
    let id = ship_to_file(env.ferry())
        .arg("spool")
        .arg("add")
        .arg(&bundle)
        .run()
        .code(0)
        .stdout()
        .trim()
        .to_string();
    ship_to_file(env.ferry())
        .arg("ship")
        .run()
        .code(1)
        .stderr_has(&format!(
            "b.tar.gz not shipped to dir (1 attempt so far), parked until `ferry spool retry {id}`"
        ))
        .stderr_has("a part of it is a file")
        .stderr_has(&format!(
            "{id} (b.tar.gz) is parked for dir by a permanent failure"
        ));
    // Fixed: retry, and the next drain ships it.
    env.ferry().arg("spool").arg("retry").arg(&id).run().code(0);
    env.ferry()
        .arg("ship")
        .run()
        .code(0)
        .stderr_has("1 shipped");
    assert_eq!(
        std::fs::read(env.dest().join("b.tar.gz")).unwrap(),
        b"bundle"
    );
}

/// A bundle and its report page in the spool: the table tells them apart
/// (the page goes first at the cap), and `show` says so.
#[test]
fn spool_list_marks_report_pages() {
    use std::io::Write;
    let env = Env::new();
    let bundle = env.file("h-20261203T120000Z-abc123-dump-failed.tar.gz", b"bundle");
    env.ferry()
        .arg("spool")
        .arg("add")
        .arg(&bundle)
        .run()
        .code(0);
    let spool = ferry_uploaders::Spool::open(env.spool(), Default::default()).unwrap();
    let mut w = spool
        .writer(
            "h-20261203T120000Z-abc123-dump-failed.report.html",
            &["dir".to_string()],
            Default::default(),
        )
        .unwrap();
    w.expendable();
    w.write_all(b"<html></html>").unwrap();
    let page = w.commit().unwrap().entry.meta.id.clone();
    drop(spool);
    let r = env.ferry().arg("spool").arg("list").run().code(0);
    let listing = r.stdout();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(lines[0].starts_with("ID "), "{listing}");
    let row = |key: &str| {
        let l = lines.iter().find(|l| l.ends_with(key)).unwrap();
        l.split_whitespace().collect::<Vec<_>>()
    };
    assert_eq!(row(".report.html")[2], "page", "{listing}");
    assert_eq!(row(".tar.gz")[2], "bundle", "{listing}");
    assert_eq!(row(".tar.gz")[3..5], ["6", "B"], "{listing}");
    env.ferry()
        .arg("spool")
        .arg("show")
        .arg(&page)
        .run()
        .code(0)
        .stdout_has("kind: report page");
}

#[test]
fn a_spool_the_user_cannot_write_is_a_clear_error() {
    let env = Env::new();
    let f = env.file("b.tar.gz", b"x");
    std::fs::create_dir(env.spool()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.spool(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ferry = if is_root() {
        // Root ignores modes: run as nobody, from a copy of the binary it
        // can surely execute.
        let bin = env.root().join("ferry");
        std::fs::copy(env!("CARGO_BIN_EXE_ferry"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = env.root().join("ferry.toml");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        env.ferry_at(&bin).uid(65534, 65534).env("HOME", "/")
    } else {
        std::fs::set_permissions(env.spool(), std::fs::Permissions::from_mode(0o500)).unwrap();
        env.ferry()
    };
    let mut cmd = ferry.arg("spool").arg("add").arg(&f).command();
    // The binary was just copied: a thread of another test that forked
    // meanwhile may still hold its write fd until it execs (ETXTBSY).
    let out = loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            r => break r.unwrap(),
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&env.spool().display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        stderr.contains("run it as root (sudo), or point spool.dir (FERRY_SPOOL_DIR)"),
        "{stderr}"
    );
}

/// Runs the test function `name` of this binary again inside a private
/// mount namespace (root only), with `FERRY_TEST_IN_MOUNT_NS=1`.
fn in_private_mount_ns(name: &str) -> bool {
    if std::env::var_os("FERRY_TEST_IN_MOUNT_NS").is_some() {
        return true;
    }
    if !is_root() {
        eprintln!("skipping {name}: a private mount namespace needs root");
        return false;
    }
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("FERRY_TEST_IN_MOUNT_NS", "1")
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} in a private mount namespace:\n{text}"
    );
    assert!(text.contains("1 passed"), "{text}");
    false
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_nothing_half_written() {
    if !in_private_mount_ns("a_full_disk_is_a_clear_error_and_leaves_nothing_half_written") {
        return;
    }
    let env = Env::new();
    std::fs::create_dir(env.spool()).unwrap();
    let mount = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=256k,mode=0700",
            "ferry-test-full",
        ])
        .arg(env.spool())
        .status()
        .unwrap();
    assert!(mount.success());
    let big = env.file("big.tar.gz", &vec![7u8; 1 << 20]);
    env.ferry()
        .arg("spool")
        .arg("add")
        .arg(&big)
        .run()
        .code(2)
        .stderr_has("No space left on device")
        .stderr_has("the spool's filesystem is full")
        .stderr_has("nothing half-written was left in the spool");
    assert!(Env::files_in(&env.spool().join("entries")).is_empty());
    assert!(Env::files_in(&env.spool().join("tmp")).is_empty());
    // Room for a small one; then the disk fills before the drain can
    // write its acknowledgement.
    let small = env.file("small.tar.gz", b"small bundle");
    env.ferry()
        .arg("spool")
        .arg("add")
        .arg(&small)
        .run()
        .code(0);
    let filler = env.spool().join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    env.ferry()
        .arg("ship")
        .run()
        .code(1)
        .stderr_has("its acknowledgement could not be written");
    std::fs::remove_file(&filler).unwrap();
    env.ferry()
        .arg("ship")
        .run()
        .code(0)
        .stderr_has("1 shipped");
    assert_eq!(Env::files_in(&env.dest()), ["small.tar.gz"]);
    assert_eq!(
        std::fs::read(env.dest().join("small.tar.gz")).unwrap(),
        b"small bundle"
    );
    let _ = std::process::Command::new("umount")
        .arg(env.spool())
        .status();
}

#[test]
fn install_writes_the_units_and_uninstall_removes_them() {
    let env = Env::new();
    let units = env.root().join("units");
    env.ferry()
        .env("FERRY_SPOOL_MAX_MIB", "99")
        .arg("install")
        .arg("--no-systemctl")
        .arg("--unit-dir")
        .arg(&units)
        .run()
        .code(0)
        .stderr_has("ferry-ship.service")
        .stderr_has("systemd is not running here");
    let service = std::fs::read_to_string(units.join("ferry-ship.service")).unwrap();
    assert!(service.contains(" ship\n"), "{service}");
    assert!(
        service.contains("Environment=\"FERRY_SPOOL_MAX_MIB=99\""),
        "{service}"
    );
    assert!(
        service.contains(&format!(
            "Environment=\"FERRY_SPOOL_DIR={}\"",
            env.spool().display()
        )),
        "{service}"
    );
    let timer = std::fs::read_to_string(units.join("ferry-ship.timer")).unwrap();
    assert!(timer.contains("OnBootSec="), "{timer}");
    assert!(
        env.spool().join("entries").is_dir(),
        "install prepares the spool"
    );
    env.ferry()
        .arg("install")
        .arg("--uninstall")
        .arg("--no-systemctl")
        .arg("--unit-dir")
        .arg(&units)
        .run()
        .code(0)
        .stderr_has("removed");
    assert!(Env::files_in(&units).is_empty());
}
