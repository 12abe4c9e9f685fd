//! Crash test of the spool: the real `ferry` binary is killed with SIGKILL
//! at every failpoint it passes (`FERRY_FAILPOINT=*:<n>`) while it spools
//! bundles (`ferry spool add`) and drains them (`ferry ship`) into a `dir`
//! destination, then restarted; some restarts are killed again. After each
//! scenario every bundle must be at the destination exactly once and
//! byte-identical, and the spool empty (no entry, no partial, no trash,
//! nothing quarantined).
//!
//! The points are found, not listed: a first run with
//! `FERRY_FAILPOINT_TRACE` records every failpoint each step passes, so a
//! new failpoint in the write or drain path is crash-tested without
//! touching this file.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The bundles: sizes chosen so writes and copies take several chunks;
/// one is empty, one exactly a copy buffer.
const SIZES: &[usize] = &[1_500, 200_000, 40, 700_000, 0, 5_000, 256 << 10, 300];

#[derive(Clone, Copy, Debug)]
enum Step {
    Add(usize),
    Ship,
}

/// Spool two, drain, spool three more, drain, spool three, drain.
const STEPS: &[Step] = &[
    Step::Add(0),
    Step::Add(1),
    Step::Ship,
    Step::Add(2),
    Step::Add(3),
    Step::Add(4),
    Step::Ship,
    Step::Add(5),
    Step::Add(6),
    Step::Add(7),
    Step::Ship,
];

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    bundles: Vec<PathBuf>,
}

impl World {
    fn new(base: &Path) -> World {
        let tmp = tempfile::tempdir_in(base).unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::write(root.join("ferry.toml"), "").unwrap();
        let mut rng = fastrand_lite(42);
        let bundles = SIZES
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = root.join(format!("host-run{i}-ship-failed.tar.gz"));
                let data: Vec<u8> = (0..n).map(|_| rng()).collect();
                std::fs::write(&p, data).unwrap();
                p
            })
            .collect();
        World {
            _tmp: tmp,
            root,
            bundles,
        }
    }

    /// A copy of `self` in a new directory (the state after some steps).
    fn copy(&self, base: &Path) -> World {
        let tmp = tempfile::tempdir_in(base).unwrap();
        let root = tmp.path().to_path_buf();
        let out = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.root.display()))
            .arg(&root)
            .output()
            .unwrap();
        assert!(out.status.success(), "cp: {out:?}");
        let bundles = self
            .bundles
            .iter()
            .map(|b| root.join(b.file_name().unwrap()))
            .collect();
        World {
            _tmp: tmp,
            root,
            bundles,
        }
    }

    fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }

    fn dest(&self) -> PathBuf {
        self.root.join("dest")
    }

    fn command(&self, step: Step) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.arg("--config").arg(self.root.join("ferry.toml"));
        match step {
            Step::Add(i) => {
                c.args(["spool", "add"]).arg(&self.bundles[i]);
            }
            Step::Ship => {
                c.args(["ship", "--no-wait"]);
            }
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") || k.starts_with("FERRY_") || k == "TRACEPARENT" {
                c.env_remove(k);
            }
        }
        c.env("FERRY_SPOOL_DIR", self.spool())
            .env("FERRY_SHIP_DIR", self.dest())
            .env("FERRY_STATE_DIR", self.root.join("state"))
            // One entry at a time: the n-th failpoint is the same moment in
            // every run of a step.
            .env("FERRY_SPOOL_CONCURRENCY", "1")
            .env("FERRY_LOG", "error");
        c
    }

    /// Runs `step`; with `kill_at`, SIGKILLed at that failpoint hit.
    fn run(&self, step: Step, kill_at: Option<usize>, trace: Option<&Path>) -> ExitStatus {
        let mut c = self.command(step);
        if let Some(n) = kill_at {
            c.env("FERRY_FAILPOINT", format!("*:{n}"));
        }
        if let Some(t) = trace {
            c.env("FERRY_FAILPOINT_TRACE", t);
        }
        let out = c.output().expect("run ferry");
        let clean = out.status.success() || out.status.signal().is_some();
        assert!(
            clean,
            "{step:?} failed: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.status
    }

    /// Every bundle once at the destination, byte-identical; the spool empty.
    fn check(&self, what: &str) {
        let mut found = BTreeMap::new();
        for e in std::fs::read_dir(self.dest()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            // The dir backend's own temporary files (a put killed mid-copy)
            // are not objects: it lists and serves only renamed ones.
            if name.starts_with(".ferry-tmp") {
                continue;
            }
            found.insert(name, std::fs::read(e.path()).unwrap());
        }
        let want: BTreeSet<String> = self
            .bundles
            .iter()
            .map(|b| b.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            found.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "{what}: objects at the destination"
        );
        for b in &self.bundles {
            let name = b.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                found[&name] == std::fs::read(b).unwrap(),
                "{what}: {name} differs from what was spooled"
            );
        }
        for sub in ["entries", "tmp", "trash", "quarantine"] {
            let left: Vec<_> = std::fs::read_dir(self.spool().join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "{what}: spool/{sub} holds {left:?}");
        }
    }
}

/// A tiny deterministic generator (xorshift), so the test needs no crate.
fn fastrand_lite(seed: u64) -> impl FnMut() -> u8 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }
}

/// The failpoints each step passes in an undisturbed run, and the state
/// before each step.
fn trace_steps(base: &Path) -> (Vec<Vec<String>>, Vec<World>) {
    let w = World::new(base);
    let mut before = Vec::new();
    let traces = STEPS
        .iter()
        .enumerate()
        .map(|(i, step)| {
            before.push(w.copy(base));
            let t = w.root.join(format!("trace-{i}"));
            let status = w.run(*step, None, Some(&t));
            assert!(status.success(), "{step:?}: {status:?}");
            let hits = std::fs::read_to_string(&t)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            std::fs::remove_file(&t).unwrap();
            hits
        })
        .collect();
    w.check("undisturbed run");
    (traces, before)
}

/// Which hits of a step to kill at: every hit of every failpoint, except
/// that a long run of one chunk failpoint is thinned to its first and last
/// hits and every third one.
fn points(trace: &[String]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < trace.len() {
        let mut j = i;
        while j < trace.len() && trace[j] == trace[i] {
            j += 1;
        }
        for k in i..j {
            let in_run = k - i;
            if j - i <= 12 || in_run < 3 || k + 3 >= j || in_run.is_multiple_of(3) {
                out.push(k + 1);
            }
        }
        i = j;
    }
    out
}

fn scenario(
    base: &Path,
    before: &World,
    step_at: usize,
    hit: usize,
    second_kill: Option<usize>,
) -> String {
    let w = before.copy(base);
    let step = STEPS[step_at];
    let status = w.run(step, Some(hit), None);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{step:?} was not stopped at hit {hit}: {status:?}"
    );
    // The restart: the interrupted step again (maybe killed once more),
    // then the rest, then drains until the spool is empty.
    if let Some(n) = second_kill
        && w.run(step, Some(n), None).signal().is_some()
    {
        w.run(step, None, None);
    } else if second_kill.is_none() {
        w.run(step, None, None);
    }
    for s in &STEPS[step_at + 1..] {
        w.run(*s, None, None);
    }
    for _ in 0..3 {
        if w.run(Step::Ship, None, None).success() {
            break;
        }
    }
    let what = format!("killed in step {step_at} ({step:?}) at failpoint hit {hit}");
    w.check(&what);
    what
}

#[test]
fn sigkill_at_every_failpoint_loses_and_duplicates_nothing() {
    // tmpfs when there is one: SIGKILL keeps what reached the kernel, so
    // fsync's cost buys nothing here (the guest test cuts the power).
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let (traces, before) = trace_steps(&base);
    let names: BTreeSet<&str> = traces.iter().flatten().map(String::as_str).collect();
    for must in [
        "spool.write.chunk",
        "spool.commit.before_rename",
        "spool.commit.renamed",
        "drain.put.begin",
        "dir.copy.chunk",
        "dir.put.copied",
        "drain.put.done",
        "spool.file.renamed",
        "spool.remove.renamed",
    ] {
        assert!(
            names.contains(must),
            "failpoint {must} never passed: {names:?}"
        );
    }
    let mut rng = fastrand_lite(7);
    let mut done = 0;
    for (step_at, trace) in traces.iter().enumerate() {
        for hit in points(trace) {
            // A third of the restarts die too, somewhere in their first 40
            // failpoints.
            let r = rng();
            let second = r.is_multiple_of(3).then_some(1 + usize::from(r) % 40);
            scenario(&base, &before[step_at], step_at, hit, second);
            done += 1;
        }
    }
    eprintln!(
        "{done} kill points over {} failpoints ({} distinct names) passed",
        traces.iter().map(Vec::len).sum::<usize>(),
        names.len()
    );
    assert!(done >= 200, "only {done} kill points");
}
