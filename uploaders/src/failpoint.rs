//! Failpoints: named places where ferry's crash tests stop the process.
//!
//! `FERRY_FAILPOINT=<name>:<n>` kills the process with SIGKILL the n-th
//! time it passes the failpoint `name` (`*` counts every failpoint), so a
//! test can stop ferry at any step of a spool write or drain and check
//! what a restart makes of it. `FERRY_FAILPOINT=<name>:<n>:pause` stops
//! there instead (the process sleeps until it is killed; the guest test cuts
//! the power meanwhile). `FERRY_FAILPOINT_TRACE=<file>` appends the name of
//! every failpoint passed, one a line, so a harness can enumerate them.
//!
//! Compiled in always: with neither variable set a failpoint costs one
//! relaxed load of an initialised `OnceLock` and a branch.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// What to do at the chosen hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Pause,
}

#[derive(Debug)]
struct Plan {
    /// `None` when only tracing.
    target: Option<(String, u64, Action)>,
    trace: Option<std::path::PathBuf>,
    hits: AtomicU64,
}

static PLAN: OnceLock<Option<Plan>> = OnceLock::new();

fn parse(spec: &str) -> Option<(String, u64, Action)> {
    let mut parts = spec.trim().splitn(3, ':');
    let name = parts.next().filter(|n| !n.is_empty())?.to_string();
    let n = parts.next()?.parse::<u64>().ok().filter(|n| *n > 0)?;
    let action = match parts.next() {
        None | Some("kill") => Action::Kill,
        Some("pause") => Action::Pause,
        Some(_) => return None,
    };
    Some((name, n, action))
}

fn plan() -> Option<&'static Plan> {
    PLAN.get_or_init(|| {
        let target = std::env::var("FERRY_FAILPOINT").ok().and_then(|s| {
            let parsed = parse(&s);
            if parsed.is_none() {
                eprintln!(
                    "ferry: warning: FERRY_FAILPOINT={s:?} is not <name>:<n>[:kill|:pause]; ignored"
                );
            }
            parsed
        });
        let trace = std::env::var_os("FERRY_FAILPOINT_TRACE").map(std::path::PathBuf::from);
        (target.is_some() || trace.is_some()).then(|| Plan {
            target,
            trace,
            hits: AtomicU64::new(0),
        })
    })
    .as_ref()
}

/// Passes the failpoint `name`.
#[inline]
pub fn hit(name: &str) {
    if let Some(plan) = plan() {
        slow_hit(plan, name);
    }
}

#[cold]
fn slow_hit(plan: &Plan, name: &str) {
    if let Some(path) = &plan.trace
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{name}");
    }
    let Some((target, n, action)) = &plan.target else {
        return;
    };
    if target != "*" && target != name {
        return;
    }
    let count = plan.hits.fetch_add(1, Ordering::SeqCst) + 1;
    if count != *n {
        return;
    }
    match action {
        Action::Kill => {
            // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, so
            // nothing runs after it: no destructor, no buffered write.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        Action::Pause => {
            eprintln!("ferry: failpoint {name} reached; paused until killed");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse("spool.commit:3"),
            Some(("spool.commit".into(), 3, Action::Kill))
        );
        assert_eq!(parse("*:1:pause"), Some(("*".into(), 1, Action::Pause)));
        assert_eq!(parse("x:2:kill"), Some(("x".into(), 2, Action::Kill)));
        for bad in ["", "x", "x:0", "x:-1", ":3", "x:3:explode", "x:y"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn unset_failpoints_do_nothing() {
        // The test process has neither variable set.
        hit("spool.test");
    }
}
