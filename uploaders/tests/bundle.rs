//! Bundles end to end: written by `BundleWriter`, read back by
//! `BundleReader` and by the system's gzip, tar and sha256sum.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_uploaders::bundle::{
    BundleError, BundleOptions, BundleReader, BundleWriter, DETERMINISTIC_MTIME, EntryKind,
    ExtractLimits, MANIFEST_NAME, bundle_name, partial_path, write_bundle,
};
use serde_json::json;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A CRIU-like log of about `len` bytes.
fn log_text(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 200);
    let mut i = seed;
    while v.len() < len {
        i += 1;
        let line = match i % 5 {
            0 => format!(
                "({:02}.{:06}) {}: Dumping path for {} fd via self 11 [/usr/lib/x86_64-linux-gnu/libc.so.6]\n",
                i / 100_000,
                i % 1_000_000,
                1000 + i % 13,
                i % 64
            ),
            1 => format!(
                "({:02}.{:06}) pie: {}: __fetched msg: 8 8 0\n",
                i / 100_000,
                i % 1_000_000,
                1000 + i % 13
            ),
            2 => format!(
                "({:02}.{:06}) page-pipe: Add iov to page pipe {:#x}/{}\n",
                i / 100_000,
                i % 1_000_000,
                0x7f00_0000_0000u64 + i * 4096,
                i % 512
            ),
            3 => format!(
                "({:02}.{:06}) Error (criu/files-reg.c:1710): Can't lookup mount={} for fd={}\n",
                i / 100_000,
                i % 1_000_000,
                i % 97,
                i % 64
            ),
            _ => format!(
                "({:02}.{:06}) {}: vma {:#x}\n",
                i / 100_000,
                i % 1_000_000,
                1000 + i % 13,
                i.wrapping_mul(0x9e37_79b9)
            ),
        };
        v.extend_from_slice(line.as_bytes());
    }
    v
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn opts(threads: usize) -> BundleOptions {
    BundleOptions {
        threads,
        block_size: 64 << 10,
        ..BundleOptions::default()
    }
}

/// Writes a bundle of a log directory, a single file and some bytes.
fn sample_bundle(dir: &Path, threads: usize) -> PathBuf {
    let logs = dir.join("logs");
    fs::create_dir_all(logs.join("criu")).expect("mkdir");
    fs::write(logs.join("criu/dump.log"), log_text(700_000, 1)).expect("write");
    fs::write(logs.join("criu/restore.log"), log_text(3_000, 2)).expect("write");
    fs::write(logs.join("b.txt"), b"second\n").expect("write");
    fs::write(logs.join("a.txt"), b"first\n").expect("write");
    fs::write(logs.join("empty"), b"").expect("write");
    std::os::unix::fs::symlink("/etc/passwd", logs.join("passwd-link")).expect("symlink");
    let single = dir.join("journal.txt");
    fs::write(&single, log_text(10_000, 3)).expect("write");

    let dest = dir.join(bundle_name("ci-runner-7", "run-42", "dump", "failed"));
    let manifest = write_bundle(
        &dest,
        opts(threads),
        json!({"run_id": "run-42", "host": "ci-runner-7"}),
        |w| {
            w.add_dir("logs", &logs)?;
            w.add_path("journal/journal.txt", &single)?;
            w.add_bytes("trace/otlp.jsonl", b"{\"span\":1}\n")?;
            Ok(())
        },
    )
    .expect("write_bundle");
    assert_eq!(manifest.files.len(), 7);
    assert!(!partial_path(&dest).exists());
    dest
}

#[test]
fn roundtrip_through_the_reader() {
    let t = tmp();
    let dest = sample_bundle(t.path(), 2);
    let r = BundleReader::open(&dest).expect("open");
    let m = r.manifest();
    assert_eq!(m.format, 1);
    assert_eq!(m.run, json!({"run_id": "run-42", "host": "ci-runner-7"}));
    assert!(m.created.ends_with('Z'), "{}", m.created);
    let names: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "logs/a.txt",
            "logs/b.txt",
            "logs/criu/dump.log",
            "logs/criu/restore.log",
            "logs/empty",
            "journal/journal.txt",
            "trace/otlp.jsonl"
        ]
    );
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].path, "logs/passwd-link");
    assert_eq!(m.skipped[0].reason, "symlink");

    // manifest.json is the last entry; every entry is a regular file.
    let entries = r.entries();
    assert_eq!(entries.last().expect("entries").path, MANIFEST_NAME);
    assert!(entries.iter().all(|e| e.kind == EntryKind::File));

    let report = r.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, 7);
    assert_eq!(
        r.read_file("logs/criu/dump.log").expect("read"),
        log_text(700_000, 1)
    );
    assert_eq!(
        r.read_file("trace/otlp.jsonl").expect("read"),
        b"{\"span\":1}\n"
    );
    match r.read_file("nope") {
        Err(BundleError::NoSuchEntry { name, .. }) => assert_eq!(name, "nope"),
        other => panic!("expected NoSuchEntry, got {other:?}"),
    }
}

#[test]
fn headers_are_deterministic() {
    let t = tmp();
    let dest = sample_bundle(t.path(), 1);
    let f = fs::File::open(&dest).expect("open");
    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    for e in a.entries().expect("entries") {
        let e = e.expect("entry");
        let h = e.header();
        assert_eq!(h.mtime().expect("mtime"), DETERMINISTIC_MTIME);
        assert_eq!(h.uid().expect("uid"), 0);
        assert_eq!(h.gid().expect("gid"), 0);
        assert_eq!(h.mode().expect("mode"), 0o644);
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let data = log_text(400_000, 9);
    let mut outs = Vec::new();
    for threads in [1, 2, 4] {
        let mut w = BundleWriter::new(Vec::new(), opts(threads)).expect("writer");
        w.add_bytes("a.log", &data).expect("add");
        let (gz, m) = w.finish(json!(null)).expect("finish");
        outs.push((gz, m.files));
    }
    // The manifest's `created` may differ by a second; the files may not.
    assert!(outs.windows(2).all(|w| w[0].1 == w[1].1));
}

/// The system's gzip and GNU tar read the multi-member output, and
/// `sha256sum` of the extracted files matches the manifest.
#[test]
fn system_gzip_tar_and_sha256sum_accept_the_bundle() {
    if !(have("gzip") && have("tar")) {
        eprintln!("SKIP: gzip or tar not installed");
        return;
    }
    let t = tmp();
    let dest = sample_bundle(t.path(), 2);
    let st = Command::new("gzip")
        .arg("-t")
        .arg(&dest)
        .status()
        .expect("gzip -t");
    assert!(st.success(), "gzip -t rejected {}", dest.display());

    let out = Command::new("tar")
        .arg("-tzf")
        .arg(&dest)
        .output()
        .expect("tar -tzf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(listed.len(), 8);
    assert_eq!(listed.last().map(String::as_str), Some(MANIFEST_NAME));

    let x = t.path().join("x");
    fs::create_dir(&x).expect("mkdir");
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&dest)
        .arg("-C")
        .arg(&x)
        .status()
        .expect("tar -x");
    assert!(st.success());
    let m = BundleReader::open(&dest).expect("open").manifest().clone();
    if have("sha256sum") {
        for f in &m.files {
            let out = Command::new("sha256sum")
                .arg(x.join(&f.path))
                .output()
                .expect("sha256sum");
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(line.starts_with(&f.sha256), "{}: {line}", f.path);
        }
    }
    let on_disk: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join(MANIFEST_NAME)).expect("manifest")).expect("json");
    assert_eq!(on_disk["files"][2]["path"], "logs/criu/dump.log");
    assert_eq!(on_disk["files"][2]["truncated"], false);
    assert_eq!(on_disk["files"][2]["redacted"], 0);
}

#[test]
fn output_is_several_gzip_members() {
    let data = log_text(300_000, 5);
    let mut w = BundleWriter::new(Vec::new(), opts(2)).expect("writer");
    w.add_bytes("a.log", &data).expect("add");
    let (gz, _) = w.finish(json!({})).expect("finish");
    // A single-member decoder stops after the first 64 KiB block: the
    // reason the reader only ever uses MultiGzDecoder.
    let mut first = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut first)
        .expect("first member");
    assert_eq!(first.len(), 64 << 10);
    let mut all = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut all)
        .expect("all members");
    assert!(all.len() > data.len());
}

#[test]
fn secrets_split_across_read_chunks_are_redacted() {
    let t = tmp();
    let secret = "s3cr3t-T0KEN-value";
    // Put one occurrence across the 256 KiB read boundary, and others around.
    let mut data = vec![b'.'; (256 << 10) - 7];
    data.extend_from_slice(secret.as_bytes());
    data.extend_from_slice(b"\nAuthorization: Bearer abc.def\n");
    data.extend_from_slice(format!("token={secret}\n").as_bytes());
    data.extend_from_slice(b"curl -H 'authorization: token ghp_xyz' https://x\n");
    let path = t.path().join("app.log");
    fs::write(&path, &data).expect("write");
    let dest = t.path().join("b.tar.gz");
    let o = BundleOptions {
        secrets: vec![secret.to_string(), "abc".to_string()],
        ..opts(2)
    };
    let m = write_bundle(
        &dest,
        o,
        json!({"note": format!("token is {secret}")}),
        |w| w.add_path("logs/app.log", &path),
    )
    .expect("bundle");
    assert_eq!(m.files[0].redacted, 4);
    assert_eq!(m.run["note"], "token is [REDACTED]");

    let r = BundleReader::open(&dest).expect("open");
    let got = r.read_file("logs/app.log").expect("read");
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains(secret));
    assert!(!text.contains("abc.def"));
    assert!(!text.contains("ghp_xyz"));
    assert!(text.contains("Authorization: Bearer [REDACTED]\n"));
    assert!(text.contains("authorization: token [REDACTED]' https://x\n"));
    assert_eq!(got.len() as u64, m.files[0].size);
    assert!(r.verify().expect("verify").is_ok());

    // Nothing of the secret reaches the compressed file either.
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(fs::File::open(&dest).expect("open"))
        .read_to_end(&mut raw)
        .expect("decode");
    assert!(memchr::memmem::find(&raw, secret.as_bytes()).is_none());
}

#[test]
fn capped_file_keeps_head_and_tail() {
    let t = tmp();
    let data = log_text(2_000_000, 4);
    let path = t.path().join("huge.log");
    fs::write(&path, &data).expect("write");
    let o = BundleOptions {
        max_file_bytes: Some(100_000),
        ..opts(2)
    };
    let mut w = BundleWriter::new(Vec::new(), o).expect("writer");
    w.add_path("huge.log", &path).expect("add");
    let (gz, m) = w.finish(json!({})).expect("finish");
    let f = &m.files[0];
    assert!(f.truncated);
    assert_eq!(f.source_size, data.len() as u64);
    assert!(f.size <= 100_000 + 200 && f.size > 90_000, "{}", f.size);

    let dest = t.path().join("b.tar.gz");
    fs::write(&dest, gz).expect("write");
    let got = BundleReader::open(&dest)
        .expect("open")
        .read_file("huge.log")
        .expect("read");
    let text = String::from_utf8(got).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    let marker = lines
        .iter()
        .position(|l| l.starts_with("[ferry: truncated:"))
        .expect("marker line");
    // Whole lines on both sides: the head is a prefix of the original, the
    // tail a suffix, both cut at line ends.
    let head = lines[..marker].join("\n") + "\n";
    let tail = lines[marker + 1..].join("\n") + "\n";
    let orig = String::from_utf8(data).expect("utf8");
    assert!(orig.starts_with(&head));
    assert!(orig.ends_with(&tail));
    assert!(orig.contains(&format!("\n{}", lines[marker + 1])));
    assert!(lines[marker].contains("bytes omitted"));
}

/// The tar growing-file trap: a log appended to while it is bundled must
/// not corrupt the archive; the part written after the open is left out.
#[test]
fn a_file_growing_while_bundled_leaves_a_valid_archive() {
    let t = tmp();
    let path = t.path().join("growing.log");
    fs::write(&path, log_text(4_000_000, 6)).expect("write");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&log_text(10_000, 7)).expect("append");
            }
        })
    };
    let dest = t.path().join("b.tar.gz");
    let res = write_bundle(&dest, opts(2), json!({}), |w| {
        w.add_path("growing.log", &path)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    appender.join().expect("appender");
    let m = res.expect("bundle");
    let r = BundleReader::open(&dest).expect("open");
    assert!(r.verify().expect("verify").is_ok());
    let stored = r.read_file("growing.log").expect("read");
    assert_eq!(stored.len() as u64, m.files[0].size);
    let now = fs::read(&path).expect("read");
    assert!(now.len() >= stored.len());
    assert!(now.starts_with(&stored));
    assert!(!m.files[0].changed_while_read);
}

#[test]
fn truncated_or_corrupt_gzip_is_a_clear_error() {
    let t = tmp();
    let dest = sample_bundle(t.path(), 2);
    let bytes = fs::read(&dest).expect("read");

    let cut = t.path().join("cut.tar.gz");
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let e = BundleReader::open(&cut).expect_err("truncated");
    assert!(matches!(e, BundleError::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("cut.tar.gz") && msg.contains("truncated or corrupt"),
        "{msg}"
    );

    // Only the last 4 bytes (ISIZE of the last member) missing.
    let short = t.path().join("short.tar.gz");
    fs::write(&short, &bytes[..bytes.len() - 4]).expect("write");
    assert!(matches!(
        BundleReader::open(&short),
        Err(BundleError::Corrupt { .. })
    ));

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let bad = t.path().join("bad.tar.gz");
    fs::write(&bad, &flipped).expect("write");
    assert!(matches!(
        BundleReader::open(&bad),
        Err(BundleError::Corrupt { .. })
    ));

    let e = BundleReader::open(t.path().join("absent.tar.gz")).expect_err("absent");
    assert!(e.to_string().contains("absent.tar.gz"), "{e}");
}

/// One entry of a hand-made archive: (name, type, data, link target).
type Raw<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A hand-made tar.gz with the given entries.
fn craft(path: &Path, entries: &[Raw<'_>]) {
    let gz = flate2::write::GzEncoder::new(
        fs::File::create(path).expect("create"),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // Raw bytes: set_path would refuse the hostile names.
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name);
        raw.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        b.append(&h, *data).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gz");
}

fn manifest_for(files: &[(&str, &[u8])]) -> Vec<u8> {
    use sha2::Digest;
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|(p, d)| json!({"path": p, "size": d.len(), "sha256": hex::encode(sha2::Sha256::digest(d)), "truncated": false, "redacted": 0, "source_size": d.len()}))
        .collect();
    serde_json::to_vec(
        &json!({"format": 1, "ferry_version": "0", "created": "x", "run": {}, "files": files}),
    )
    .expect("json")
}

#[test]
fn verify_reports_mismatched_missing_and_extra_files() {
    let t = tmp();
    let p = t.path().join("m.tar.gz");
    let manifest = manifest_for(&[("a", b"right"), ("gone", b"x")]);
    let reg = tar::EntryType::Regular;
    craft(
        &p,
        &[
            (b"a", reg, b"wrong", b""),
            (b"extra", reg, b"e", b""),
            (b"manifest.json", reg, &manifest, b""),
        ],
    );
    let r = BundleReader::open(&p).expect("open");
    let rep = r.verify().expect("verify");
    assert!(!rep.is_ok());
    assert_eq!(rep.mismatched.len(), 1);
    assert_eq!(rep.mismatched[0].path, "a");
    assert_eq!(rep.missing, ["gone"]);
    assert_eq!(rep.extra, ["extra"]);
    let e = rep.into_result(&p).expect_err("mismatch");
    assert!(e.to_string().contains("m.tar.gz"), "{e}");
    assert!(matches!(
        r.read_file("a"),
        Err(BundleError::Mismatch { .. })
    ));
}

#[test]
fn archive_without_manifest_is_refused() {
    let t = tmp();
    let p = t.path().join("plain.tar.gz");
    craft(&p, &[(b"a", tar::EntryType::Regular, b"x", b"")]);
    assert!(matches!(
        BundleReader::open(&p),
        Err(BundleError::NoManifest { .. })
    ));
}

/// Regression: a manifest of a newer format was read as if it were ours
/// (docs/bundles.md says a reader refuses what it does not know).
#[test]
fn a_newer_manifest_format_is_refused() {
    let t = tmp();
    let p = t.path().join("future.tar.gz");
    let manifest = serde_json::to_vec(
        // Without fields format 1 requires: refused as newer, not as broken.
        &json!({"format": 2, "ferry_version": "9", "entries": []}),
    )
    .expect("json");
    craft(
        &p,
        &[(b"manifest.json", tar::EntryType::Regular, &manifest, b"")],
    );
    let e = BundleReader::open(&p).expect_err("refused");
    assert!(
        matches!(
            e,
            BundleError::NewerFormat {
                format: 2,
                known: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("newer ferry"), "{e}");
}

/// Regression: `format: 0`, which ferry never wrote, was read as ours;
/// and a hand-made manifest was told to "rebuild with this ferry version".
#[test]
fn a_manifest_of_format_0_is_refused() {
    let t = tmp();
    let good = sample_bundle(t.path(), 1);
    let mut manifest =
        serde_json::to_value(BundleReader::open(&good).expect("open").manifest()).expect("json");
    manifest["format"] = json!(0);
    manifest["files"] = json!([]);
    let p = t.path().join("zero.tar.gz");
    let bytes = serde_json::to_vec(&manifest).expect("json");
    craft(
        &p,
        &[(b"manifest.json", tar::EntryType::Regular, &bytes, b"")],
    );
    let e = BundleReader::open(&p).expect_err("refused");
    assert!(matches!(e, BundleError::BadManifest { .. }), "{e}");
    assert!(e.to_string().contains("`format` is 0"), "{e}");
    assert!(
        e.to_string().contains("docs/bundles.md lists every field"),
        "{e}"
    );
}

#[test]
fn extraction_writes_the_files() {
    let t = tmp();
    let dest = sample_bundle(t.path(), 2);
    let r = BundleReader::open(&dest).expect("open");
    let out = t.path().join("out");
    let s = r
        .extract_to(&out, &ExtractLimits::default())
        .expect("extract");
    assert_eq!(s.files, 8);
    assert_eq!(fs::read(out.join("logs/a.txt")).expect("a"), b"first\n");
    // Refuses to extract over something.
    assert!(matches!(
        r.extract_to(&out, &ExtractLimits::default()),
        Err(BundleError::TargetNotEmpty { .. })
    ));
    let small = ExtractLimits {
        max_total_bytes: 1000,
        ..ExtractLimits::default()
    };
    let e = r
        .extract_to(&t.path().join("small"), &small)
        .expect_err("limit");
    assert!(matches!(e, BundleError::LimitExceeded { .. }), "{e:?}");
    assert!(
        !t.path().join("small").exists(),
        "wrote before checking the limit"
    );
}

#[test]
fn extraction_refuses_hostile_entries() {
    use tar::EntryType as T;
    let t = tmp();
    let reg = T::Regular;
    let manifest = manifest_for(&[]);
    let cases: Vec<(&str, Vec<Raw<'_>>)> = vec![
        ("absolute", vec![(b"/tmp/ferry-evil", reg, b"x", b"")]),
        ("dotdot", vec![(b"a/../../evil", reg, b"x", b"")]),
        ("symlink out", vec![(b"l", T::Symlink, b"", b"../../etc")]),
        ("absolute symlink", vec![(b"l", T::Symlink, b"", b"/etc")]),
        (
            "through symlink",
            vec![(b"l", T::Symlink, b"", b"d"), (b"l/x", reg, b"x", b"")],
        ),
        ("hard link out", vec![(b"h", T::Link, b"", b"../x")]),
        ("char device", vec![(b"dev", T::Char, b"", b"")]),
        ("block device", vec![(b"blk", T::Block, b"", b"")]),
        ("fifo", vec![(b"fifo", T::Fifo, b"", b"")]),
    ];
    for (what, mut entries) in cases {
        entries.push((b"manifest.json", reg, &manifest, b""));
        let p = t.path().join(format!("{}.tar.gz", what.replace(' ', "-")));
        craft(&p, &entries);
        let r = BundleReader::open(&p).expect(what);
        let out = t.path().join(format!("out-{}", what.replace(' ', "-")));
        let e = r
            .extract_to(&out, &ExtractLimits::default())
            .expect_err(what);
        assert!(
            matches!(e, BundleError::UnsafeEntry { .. }),
            "{what}: {e:?}"
        );
    }
    assert!(!Path::new("/tmp/ferry-evil").exists());
    assert!(!t.path().join("evil").exists());
}

#[test]
fn write_bundle_leaves_nothing_on_error() {
    let t = tmp();
    let dest = t.path().join("b.tar.gz");
    let e = write_bundle(&dest, opts(2), json!({}), |w| {
        w.add_bytes("a", b"x")?;
        w.add_path("missing", &t.path().join("no-such-file"))
    })
    .expect_err("missing file");
    assert!(e.to_string().contains("no-such-file"), "{e}");
    assert!(!dest.exists());
    assert!(!partial_path(&dest).exists());
}

#[test]
fn add_path_rejects_bad_input() {
    let t = tmp();
    let mut w = BundleWriter::new(Vec::new(), opts(1)).expect("writer");
    w.add_bytes("a", b"x").expect("add");
    assert!(matches!(
        w.add_bytes("a", b"y"),
        Err(BundleError::Duplicate { .. })
    ));
    assert!(matches!(
        w.add_bytes("../a", b"y"),
        Err(BundleError::InvalidName { .. })
    ));
    assert!(matches!(
        w.add_bytes("manifest.json", b"y"),
        Err(BundleError::InvalidName { .. })
    ));
    assert!(matches!(
        w.add_path("d", t.path()),
        Err(BundleError::NotRegularFile { .. })
    ));
    let fifo = t.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstring");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Must not block on the FIFO.
    assert!(matches!(
        w.add_path("f", &fifo),
        Err(BundleError::NotRegularFile { .. })
    ));
    // The failed names are still free.
    w.add_bytes("d", b"ok").expect("name d reusable");
    w.finish(json!({})).expect("finish");
}

#[test]
fn names_longer_than_100_bytes_survive() {
    let t = tmp();
    let long = format!("logs/{}/{}.log", "d".repeat(120), "f".repeat(80));
    let dest = t.path().join("b.tar.gz");
    write_bundle(&dest, opts(2), json!({}), |w| {
        w.add_bytes(&long, b"payload\n")
    })
    .expect("bundle");
    let r = BundleReader::open(&dest).expect("open");
    assert_eq!(r.entries()[0].path, long);
    assert_eq!(r.read_file(&long).expect("read"), b"payload\n");
    assert!(r.verify().expect("verify").is_ok());
    if have("tar") {
        let out = Command::new("tar")
            .arg("-tzf")
            .arg(&dest)
            .output()
            .expect("tar");
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == long)
        );
    }
}

/// `/proc` and `/sys` files report sizes (0, 4096) unrelated to their
/// content; they must be stored whole, not as nothing or NUL-padded.
#[test]
fn proc_and_sys_files_are_read_whole() {
    let mut w = BundleWriter::new(Vec::new(), opts(1)).expect("writer");
    w.add_path("proc/status", Path::new("/proc/self/status"))
        .expect("proc");
    let sys = Path::new("/sys/devices/system/cpu/online");
    let has_sys = sys.exists();
    if has_sys {
        w.add_path("sys/online", sys).expect("sys");
    }
    let (gz, m) = w.finish(json!({})).expect("finish");
    let t = tmp();
    let dest = t.path().join("b.tar.gz");
    fs::write(&dest, gz).expect("write");
    let r = BundleReader::open(&dest).expect("open");
    let status = String::from_utf8(r.read_file("proc/status").expect("read")).expect("utf8");
    assert!(status.starts_with("Name:"), "{status:?}");
    assert!(!m.files[0].changed_while_read);
    if has_sys {
        let online = r.read_file("sys/online").expect("read");
        assert!(!online.is_empty() && !online.contains(&0), "{online:?}");
        assert!(!m.files[1].changed_while_read);
    }
}
