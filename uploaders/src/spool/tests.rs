use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::backends::{Backend, BackendError, DirBackend, ErrorKind, Faulty};
use crate::retry::RetryPolicy;
use sha2::{Digest, Sha256};

struct Fixture {
    _tmp: tempfile::TempDir,
    spool: Spool,
    stores: Vec<std::path::PathBuf>,
}

fn fixture(limits: Limits) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(tmp.path().join("spool"), limits).unwrap();
    let stores = vec![tmp.path().join("a"), tmp.path().join("b")];
    Fixture {
        _tmp: tmp,
        spool,
        stores,
    }
}

fn opts() -> DrainOptions {
    DrainOptions {
        concurrency: 2,
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            budget: Duration::from_secs(5),
            deadline: None,
        },
        include_parked: false,
    }
}

fn dests(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn spool_bytes(spool: &Spool, key: &str, data: &[u8], to: &[&str]) -> Committed {
    let mut w = spool.writer(key, &dests(to), Origin::default()).unwrap();
    w.write_all(data).unwrap();
    w.commit().unwrap()
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn an_entry_is_invisible_until_committed_and_private() {
    let f = fixture(Limits::default());
    let mode = std::fs::metadata(f.spool.root())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let mut w = f
        .spool
        .writer("h/b.tar.gz", &dests(&["dir"]), Origin::default())
        .unwrap();
    w.write_all(b"half").unwrap();
    assert!(f.spool.entries().unwrap().is_empty());
    assert_eq!(names_in(&f.spool.tmp_dir()).len(), 1);
    w.write_all(b" and whole").unwrap();
    let c = w.commit().unwrap();
    let all = f.spool.entries().unwrap();
    assert_eq!(all.len(), 1);
    let e = &all[0];
    assert_eq!(e.meta.key, "h/b.tar.gz");
    assert_eq!(e.meta.size, 14);
    assert_eq!(
        e.meta.sha256,
        hex::encode(Sha256::digest(b"half and whole"))
    );
    assert_eq!(std::fs::read(e.data_path()).unwrap(), b"half and whole");
    let mode = std::fs::metadata(e.data_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // Regression: entry directories and tmp.lock followed the umask.
    let mode_of = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode_of(&e.path), 0o700);
    assert_eq!(mode_of(&f.spool.tmp_lock_path()), 0o600);
    assert!(names_in(&f.spool.tmp_dir()).is_empty());
    assert_eq!(c.entry.meta.id, e.meta.id);
}

#[test]
fn an_abandoned_writer_leaves_nothing() {
    let f = fixture(Limits::default());
    {
        let mut w = f
            .spool
            .writer("k", &dests(&["dir"]), Origin::default())
            .unwrap();
        w.write_all(b"never committed").unwrap();
    }
    assert!(f.spool.entries().unwrap().is_empty());
    assert!(names_in(&f.spool.tmp_dir()).is_empty());
}

#[test]
fn bad_keys_and_destinations_are_refused() {
    let f = fixture(Limits::default());
    for (key, to) in [
        ("../x", dests(&["dir"])),
        ("k", dests(&[])),
        ("k", dests(&["Dir"])),
        ("k", dests(&["dir", "dir"])),
    ] {
        let e = f.spool.writer(key, &to, Origin::default()).err().unwrap();
        assert!(matches!(e, SpoolError::Invalid(_)), "{e}");
    }
}

#[test]
fn leftovers_of_dead_writers_are_removed_but_not_live_ones() {
    let f = fixture(Limits::default());
    let dead = f.spool.tmp_dir().join("20260101T000000Z-deadbeef");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("data"), b"partial").unwrap();
    let trash = f.spool.trash_dir().join("20260101T000000Z-0000cafe");
    std::fs::create_dir(&trash).unwrap();
    let mut live = f
        .spool
        .writer("k", &dests(&["dir"]), Origin::default())
        .unwrap();
    live.write_all(b"still writing").unwrap();
    assert_eq!(f.spool.clean_leftovers().unwrap(), 2);
    assert_eq!(names_in(&f.spool.tmp_dir()), [live.id().to_string()]);
    assert!(names_in(&f.spool.trash_dir()).is_empty());
    live.commit().unwrap();
}

/// Two destinations, the second fails the first time: the entry stays with
/// one ack, the next drain puts only to the second, then it is removed.
#[test]
fn partial_acks_are_kept_and_only_the_missing_destination_is_retried() {
    let f = fixture(Limits::default());
    let a = Arc::new(Faulty::new(Box::new(DirBackend::new(&f.stores[0]).unwrap())).named("a"));
    let b = Arc::new(
        Faulty::new(Box::new(DirBackend::new(&f.stores[1]).unwrap()))
            .named("b")
            .fail_first(2, ErrorKind::Unavailable),
    );
    let (a2, b2) = (a.clone(), b.clone());
    let resolve = move |_: &EntryMeta, d: &str| -> Result<Arc<dyn Backend>, BackendError> {
        Ok(match d {
            "a" => a2.clone(),
            _ => b2.clone(),
        })
    };
    spool_bytes(&f.spool, "h/one.tar.gz", b"one", &["a", "b"]);
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(r.entries.len(), 1);
    let e = &r.entries[0];
    assert_eq!(e.shipped.len(), 1);
    assert_eq!(e.shipped[0].destination, "a");
    assert_eq!(e.failed.len(), 1);
    assert_eq!(e.failed[0].attempts, 2, "{:?}", e.failed);
    assert!(!e.failed[0].permanent);
    assert!(!e.removed);
    assert_eq!(r.depth, 1);
    let left = &f.spool.entries().unwrap()[0];
    assert_eq!(left.pending(), ["b"]);
    assert_eq!(left.state(), "waiting");
    assert_eq!(a.puts(), 1);

    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert!(r.entries[0].removed, "{r:?}");
    assert_eq!(a.puts(), 1, "a had it already and must not be asked again");
    assert_eq!(b.puts(), 3);
    assert_eq!(r.depth, 0);
    for store in &f.stores {
        assert_eq!(std::fs::read(store.join("h/one.tar.gz")).unwrap(), b"one");
    }
    assert!(names_in(&f.spool.entries_dir()).is_empty());
    assert!(names_in(&f.spool.trash_dir()).is_empty());
}

/// Regression: the drain retried whole puts of backends that retry each
/// of their own requests, so the waits multiplied (a 60 s budget became
/// minutes). Such a backend gets one put per drain.
#[test]
fn a_backend_that_retries_itself_is_put_once_per_drain() {
    let f = fixture(Limits::default());
    let b = Arc::new(
        Faulty::new(Box::new(DirBackend::new(&f.stores[0]).unwrap()))
            .named("remote")
            .retrying_itself()
            .fail_first(1, ErrorKind::Unavailable),
    );
    let b2 = b.clone();
    let resolve =
        move |_: &EntryMeta, _: &str| -> Result<Arc<dyn Backend>, BackendError> { Ok(b2.clone()) };
    spool_bytes(&f.spool, "h/r.tar.gz", b"r", &["remote"]);
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(r.entries[0].failed[0].attempts, 1, "{r:?}");
    assert_eq!(b.puts(), 1);
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert!(r.entries[0].removed, "{r:?}");
    assert_eq!(b.puts(), 2);
}

#[test]
fn permanent_failures_park_until_retry() {
    let f = fixture(Limits::default());
    let down = Arc::new(
        Faulty::new(Box::new(DirBackend::new(&f.stores[0]).unwrap()))
            .fail_first(1, ErrorKind::Auth),
    );
    let d2 = down.clone();
    let resolve =
        move |_: &EntryMeta, _: &str| -> Result<Arc<dyn Backend>, BackendError> { Ok(d2.clone()) };
    let c = spool_bytes(&f.spool, "k", b"x", &["dir"]);
    let id = c.entry.meta.id.clone();
    drop(c);
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert!(r.entries[0].failed[0].permanent);
    assert_eq!(f.spool.entries().unwrap()[0].state(), "parked");
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(r.entries[0].parked, ["dir"]);
    assert_eq!(down.puts(), 1, "a parked destination is not tried");
    assert_eq!(f.spool.retry(&id).unwrap(), ["dir"]);
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert!(r.entries[0].removed);
}

#[test]
fn damaged_entries_are_quarantined_with_the_reason() {
    let f = fixture(Limits::default());
    let store = Arc::new(DirBackend::new(&f.stores[0]).unwrap());
    let resolve = move |_: &EntryMeta, _: &str| -> Result<Arc<dyn Backend>, BackendError> {
        Ok(store.clone())
    };
    let flipped = spool_bytes(&f.spool, "flipped", b"good bytes", &["dir"]);
    let torn = spool_bytes(&f.spool, "torn", b"other", &["dir"]);
    let (flipped_id, torn_id) = (flipped.entry.meta.id.clone(), torn.entry.meta.id.clone());
    drop((flipped, torn));
    std::fs::write(
        f.spool.entries_dir().join(&flipped_id).join("data"),
        b"evil bytes",
    )
    .unwrap();
    std::fs::write(
        f.spool.entries_dir().join(&torn_id).join("entry.json"),
        b"{\"format\": 1, \"id\"",
    )
    .unwrap();
    std::fs::write(f.spool.entries_dir().join("stray-file"), b"?").unwrap();
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    let mut names: Vec<_> = r.quarantined.iter().map(|q| q.name.clone()).collect();
    names.sort();
    let mut want = vec![
        flipped_id.clone(),
        torn_id.clone(),
        "stray-file".to_string(),
    ];
    want.sort();
    assert_eq!(names, want);
    let q = f.spool.quarantined().unwrap();
    assert_eq!(q.len(), 3);
    let flipped_q = q.iter().find(|q| q.name == flipped_id).unwrap();
    assert!(
        flipped_q.reason.contains("does not match its entry.json"),
        "{}",
        flipped_q.reason
    );
    assert_eq!(
        std::fs::read(flipped_q.path.join("data")).unwrap(),
        b"evil bytes"
    );
    let torn_q = q.iter().find(|q| q.name == torn_id).unwrap();
    assert!(
        torn_q.reason.contains("entry.json is damaged"),
        "{}",
        torn_q.reason
    );
    assert!(
        !f.stores[0].join("flipped").exists(),
        "damaged data must not be shipped"
    );
    assert_eq!(r.depth, 0);
    // Dropping is explicit, and works on quarantined entries too.
    let d = f.spool.drop_entry(&flipped_id).unwrap();
    assert!(d.quarantined);
    assert_eq!(f.spool.quarantined().unwrap().len(), 2);
}

/// A drain says how many of the entries it left are report pages (the
/// depth metric counts them apart from bundles).
#[test]
fn pages_waiting_are_counted_apart() {
    let f = fixture(Limits::default());
    let down = Arc::new(
        Faulty::new(Box::new(DirBackend::new(&f.stores[0]).unwrap()))
            .named("down")
            .fail_first(u64::MAX, ErrorKind::Unavailable),
    );
    let resolve = move |_: &EntryMeta, _: &str| -> Result<Arc<dyn Backend>, BackendError> {
        Ok(down.clone())
    };
    drop(spool_bytes(&f.spool, "b.tar.gz", b"1", &["down"]));
    let mut w = f
        .spool
        .writer("b.report.html", &["down".to_string()], Origin::default())
        .unwrap();
    w.expendable();
    w.write_all(b"<html>").unwrap();
    drop(w.commit().unwrap());
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!((r.depth, r.pages_waiting), (2, 1), "{r:?}");
    assert_eq!(
        f.spool.waiting().unwrap(),
        Waiting {
            bundles: 1,
            pages: 1
        }
    );
}

/// A report page repeats what its bundle holds: at the cap it goes first,
/// though younger than every bundle and acknowledged by no destination.
#[test]
fn the_cap_evicts_expendable_entries_first() {
    let f = fixture(Limits {
        max_bytes: 1 << 30,
        max_entries: 2,
    });
    let bundle = spool_bytes(&f.spool, "b.tar.gz", b"1", &["down"])
        .entry
        .meta
        .id;
    let mut w = f
        .spool
        .writer("b.report.html", &["down".to_string()], Origin::default())
        .unwrap();
    w.expendable();
    w.write_all(b"<html>").unwrap();
    let committed = w.commit().unwrap();
    assert!(committed.entry.meta.expendable);
    let page = committed.entry.meta.id.clone();
    // Its writer's lock goes, as at the end of a ship phase.
    drop(committed);
    let c = spool_bytes(&f.spool, "c.tar.gz", b"2", &["down"]);
    assert_eq!(c.evicted.len(), 1);
    assert_eq!(c.evicted[0].id, page);
    assert_eq!(c.evicted[0].reason, EvictReason::Expendable);
    drop(c);
    let keys: Vec<String> = f
        .spool
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.meta.key)
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"b.tar.gz".to_string()), "{keys:?}");
    assert!(
        f.spool
            .entries()
            .unwrap()
            .iter()
            .any(|e| e.meta.id == bundle)
    );
}

/// Regression: committing a page at the cap evicted the bundle it belongs
/// to (the committed entry is protected, so the bundle was the only
/// candidate). A page makes room only by removing other pages.
#[test]
fn committing_a_page_at_the_cap_never_evicts_a_bundle() {
    let f = fixture(Limits {
        max_bytes: 1 << 30,
        max_entries: 1,
    });
    let bundle = spool_bytes(&f.spool, "b.tar.gz", b"1", &["down"])
        .entry
        .meta
        .id;
    let page = |key: &str| {
        let mut w = f
            .spool
            .writer(key, &["down".to_string()], Origin::default())
            .unwrap();
        w.expendable();
        w.write_all(b"<html>").unwrap();
        w.commit().unwrap()
    };
    let first = page("b.report.html");
    assert!(first.evicted.is_empty(), "{:?}", first.evicted);
    let first_id = first.entry.meta.id.clone();
    drop(first);
    // A second page makes room by removing the first, never the bundle.
    let second = page("c.report.html");
    assert_eq!(second.evicted.len(), 1);
    assert_eq!(second.evicted[0].id, first_id);
    drop(second);
    // The next bundle must make two slots: the page goes first, then the
    // oldest bundle (a cap of one entry keeps only the newest bundle).
    let next = spool_bytes(&f.spool, "c.tar.gz", b"2", &["down"]);
    let order: Vec<(EvictReason, &str)> = next
        .evicted
        .iter()
        .map(|e| (e.reason, e.key.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        order,
        [
            (EvictReason::Expendable, "c.report.html"),
            (EvictReason::Oldest, "b.tar.gz")
        ]
    );
    assert_eq!(next.evicted[1].id, bundle);
    drop(next);
}

/// The destination stays down: entries wait, the cap evicts the oldest,
/// and an entry some destination has is evicted before older ones.
#[test]
fn the_cap_evicts_acknowledged_then_quarantined_then_oldest() {
    let f = fixture(Limits {
        max_bytes: 1 << 30,
        max_entries: 3,
    });
    let down: Arc<dyn Backend> =
        Arc::new(Faulty::down(Box::new(DirBackend::new(&f.stores[0]).unwrap())).named("down"));
    let up: Arc<dyn Backend> =
        Arc::new(Faulty::new(Box::new(DirBackend::new(&f.stores[1]).unwrap())).named("up"));
    let resolve = move |_: &EntryMeta, d: &str| -> Result<Arc<dyn Backend>, BackendError> {
        Ok(if d == "up" { up.clone() } else { down.clone() })
    };
    let old = spool_bytes(&f.spool, "old", b"1", &["down"]).entry.meta.id;
    let half = spool_bytes(&f.spool, "half", b"2", &["down", "up"])
        .entry
        .meta
        .id;
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(r.depth, 2);
    assert!(r.evicted.is_empty());
    let mid = spool_bytes(&f.spool, "mid", b"3", &["down"]).entry.meta.id;
    // The fourth is over the cap: the partly shipped one goes first,
    // though it is younger than `old`.
    let c = spool_bytes(&f.spool, "new", b"4", &["down"]);
    assert_eq!(c.evicted.len(), 1);
    assert_eq!(c.evicted[0].id, half);
    assert_eq!(c.evicted[0].reason, EvictReason::Acknowledged);
    drop(c);
    // A quarantined entry goes before the oldest good one.
    std::fs::write(f.spool.entries_dir().join(&mid).join("data"), b"X").unwrap();
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(r.quarantined.len(), 1);
    let c = spool_bytes(&f.spool, "newer", b"5", &["down"]);
    assert!(
        c.evicted.is_empty(),
        "quarantine does not count against max_entries: {:?}",
        c.evicted
    );
    drop(c);
    let c = spool_bytes(&f.spool, "newest", b"6", &["down"]);
    assert_eq!(c.evicted.len(), 1);
    assert_eq!(c.evicted[0].id, old);
    assert_eq!(c.evicted[0].reason, EvictReason::Oldest);
    let keys: Vec<String> = f
        .spool
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.meta.key)
        .collect();
    assert_eq!(keys, ["new", "newer", "newest"]);
    assert!(f.spool.depth().unwrap() <= 3);
}

#[test]
fn a_byte_cap_evicts_quarantine_before_good_entries() {
    let f = fixture(Limits {
        max_bytes: 5000,
        max_entries: 100,
    });
    let a = spool_bytes(&f.spool, "a", &[1; 2000], &["dir"])
        .entry
        .meta
        .id;
    std::fs::write(f.spool.entries_dir().join(&a).join("data"), [2; 2000]).unwrap();
    let down: Arc<dyn Backend> = Arc::new(Faulty::down(Box::new(
        DirBackend::new(&f.stores[0]).unwrap(),
    )));
    let resolve = move |_: &EntryMeta, _: &str| -> Result<Arc<dyn Backend>, BackendError> {
        Ok(down.clone())
    };
    f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(f.spool.quarantined().unwrap().len(), 1);
    let b = spool_bytes(&f.spool, "b", &[3; 2000], &["dir"]);
    assert!(b.evicted.is_empty());
    drop(b);
    // Quarantine (data and entry.json), b and c are over 5000 bytes.
    let c = spool_bytes(&f.spool, "c", &[4; 2000], &["dir"]);
    assert_eq!(c.evicted.len(), 1);
    assert_eq!(c.evicted[0].reason, EvictReason::Quarantined);
    assert_eq!(f.spool.entries().unwrap().len(), 2);
    assert!(f.spool.quarantined().unwrap().is_empty());
}

#[test]
fn the_newest_entry_is_kept_even_alone_over_the_cap() {
    let f = fixture(Limits {
        max_bytes: 10,
        max_entries: 10,
    });
    spool_bytes(&f.spool, "small", b"12345", &["dir"]);
    let c = spool_bytes(&f.spool, "big", &[0; 100], &["dir"]);
    assert_eq!(c.evicted.len(), 1);
    let keys: Vec<String> = f
        .spool
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.meta.key)
        .collect();
    assert_eq!(keys, ["big"]);
}

#[test]
fn a_second_drain_lock_says_who_holds_it() {
    let f = fixture(Limits::default());
    let _held = f
        .spool
        .lock_drain("pid 42 (ferry ship)", Wait::No, &mut |_| {})
        .unwrap();
    let e = f.spool.lock_drain("me", Wait::No, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("pid 42 (ferry ship)"), "{e}");
    let mut told = String::new();
    let e = f
        .spool
        .lock_drain("me", Wait::Up(Duration::from_millis(300)), &mut |h| {
            told = h.to_string()
        })
        .unwrap_err();
    // Regression: a wait that ran out advised dropping --no-wait, which
    // was never given.
    assert!(matches!(e, SpoolError::StillBusy { .. }), "{e}");
    assert!(e.to_string().contains("longer --wait-secs"), "{e}");
    assert!(!e.to_string().contains("--no-wait"), "{e}");
    assert_eq!(told, "pid 42 (ferry ship)");
    drop(_held);
    f.spool.lock_drain("me", Wait::No, &mut |_| {}).unwrap();
}

#[test]
fn an_entry_in_use_is_skipped_not_shipped_twice() {
    let f = fixture(Limits::default());
    let store = Arc::new(Faulty::new(Box::new(
        DirBackend::new(&f.stores[0]).unwrap(),
    )));
    let s2 = store.clone();
    let resolve =
        move |_: &EntryMeta, _: &str| -> Result<Arc<dyn Backend>, BackendError> { Ok(s2.clone()) };
    let held = spool_bytes(&f.spool, "held", b"x", &["dir"]);
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(r.busy, std::slice::from_ref(&held.entry.meta.id));
    assert_eq!(store.puts(), 0);
    let e = f.spool.drop_entry(&held.entry.meta.id).unwrap_err();
    assert!(matches!(e, SpoolError::InUse { .. }), "{e}");
    let r = f.spool.drain_committed(held, &opts(), &resolve).unwrap();
    assert!(r.removed);
    assert_eq!(store.puts(), 1);
}

#[test]
fn adding_the_same_file_twice_spools_it_once() {
    let f = fixture(Limits::default());
    let src = f.stores[0].with_file_name("src");
    std::fs::write(&src, b"bundle").unwrap();
    assert!(matches!(
        f.spool
            .add_file(&src, "k", &dests(&["dir"]), Origin::default())
            .unwrap(),
        Added::New(_)
    ));
    assert!(matches!(
        f.spool
            .add_file(&src, "k", &dests(&["dir"]), Origin::default())
            .unwrap(),
        Added::AlreadySpooled(_)
    ));
    assert_eq!(f.spool.entries().unwrap().len(), 1);
}

#[test]
fn unknown_ids_are_named() {
    let f = fixture(Limits::default());
    let e = f.spool.drop_entry("20260101T000000Z-00000000").unwrap_err();
    assert!(matches!(e, SpoolError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("ferry spool list"));
    let e = f.spool.drop_entry("../etc").unwrap_err();
    assert!(matches!(e, SpoolError::Invalid(_)), "{e}");
}

#[test]
fn a_newer_format_is_left_alone() {
    let f = fixture(Limits::default());
    let c = spool_bytes(&f.spool, "k", b"x", &["dir"]);
    let id = c.entry.meta.id.clone();
    drop(c);
    let p = f.spool.entries_dir().join(&id).join("entry.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["format"] = 99.into();
    std::fs::write(&p, v.to_string()).unwrap();
    let store: Arc<dyn Backend> = Arc::new(DirBackend::new(&f.stores[0]).unwrap());
    let resolve = move |_: &EntryMeta, _: &str| -> Result<Arc<dyn Backend>, BackendError> {
        Ok(store.clone())
    };
    let r = f.spool.drain(&opts(), &resolve).unwrap();
    assert_eq!(r.newer, [id]);
    assert!(r.quarantined.is_empty());
    assert_eq!(r.depth, 1);
}

/// Regression: a missing or unreadable file given to `spool add` was
/// blamed on the spool ("the spool changed under ferry; run again").
#[test]
fn a_source_that_cannot_be_read_is_named_as_the_argument() {
    let f = fixture(Limits {
        max_bytes: 1 << 30,
        max_entries: 10,
    });
    let dests = ["down".to_string()];
    for src in [
        std::path::PathBuf::from("/nonexistent/b.tar.gz"),
        std::env::temp_dir(),
    ] {
        let e = f
            .spool
            .add_file(&src, "b.tar.gz", &dests, Origin::default())
            .expect_err("refused");
        let msg = e.to_string();
        assert!(matches!(e, SpoolError::Source { .. }), "{msg}");
        assert!(
            msg.contains(&src.display().to_string()) && msg.contains("give a readable bundle file"),
            "{msg}"
        );
    }
    assert!(f.spool.entries().unwrap().is_empty());
}
