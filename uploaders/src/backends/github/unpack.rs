//! What a downloaded artifact is, and the bundle out of it: the raw
//! `.tar.gz` of a v7 artifact, or a zip holding it (a classic artifact),
//! told apart by the first bytes, never by a name.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::NAME;
use crate::backends::{BackendError, ErrorKind};

/// A downloaded artifact is the bundle itself (a raw, v7 artifact) or a
/// zip holding it (a classic one): decided by its first bytes, never by
/// its name.
pub enum Kind {
    Gzip,
    Zip,
    Unknown([u8; 4]),
}

pub fn sniff(path: &Path) -> Result<Kind, BackendError> {
    let mut head = [0u8; 4];
    let mut f = File::open(path)
        .map_err(|e| BackendError::from_io(NAME, format!("cannot open {}", path.display()), e))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(BackendError::from_io(
                    NAME,
                    format!("cannot read {}", path.display()),
                    e,
                ));
            }
        }
    }
    Ok(match head {
        [0x1f, 0x8b, ..] => Kind::Gzip,
        [b'P', b'K', 3, 4] => Kind::Zip,
        other => Kind::Unknown(other),
    })
}

/// The bundle inside the zip at `zip_path`, written to `out`: the only
/// file, or the one named like `key`, or the only `.tar.gz`.
pub fn unzip(zip_path: &Path, key: &str, out: &Path) -> Result<(), BackendError> {
    let bad = |why: String| {
        BackendError::new(
            NAME,
            ErrorKind::Other,
            format!("the artifact of {key:?} is a zip that {why}"),
            "check the artifact in the run's page; it was not made by ferry",
        )
    };
    let f = File::open(zip_path).map_err(|e| {
        BackendError::from_io(NAME, format!("cannot open {}", zip_path.display()), e)
    })?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let base = key.rsplit('/').next().unwrap_or(key);
    let mut files = Vec::new();
    for i in 0..z.len() {
        let e = z
            .by_index(i)
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        if e.is_file() {
            let name = e.name().map(|n| n.to_string()).unwrap_or_default();
            files.push((i, name));
        }
    }
    let last = |n: &str| n.rsplit('/').next().unwrap_or(n).to_string();
    let pick = if files.len() == 1 {
        Some(files[0].0)
    } else if let Some((i, _)) = files.iter().find(|(_, n)| last(n) == base) {
        Some(*i)
    } else {
        let gz: Vec<_> = files
            .iter()
            .filter(|(_, n)| n.ends_with(".tar.gz"))
            .collect();
        (gz.len() == 1).then(|| gz[0].0)
    };
    let index = pick.ok_or_else(|| {
        bad(format!(
            "holds {} files and none is the bundle {base}",
            files.len()
        ))
    })?;
    let mut entry = z
        .by_index(index)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    // A bundle is gzip already: a member far bigger than its compressed
    // bytes is a zip bomb, not a bundle.
    let limit = entry
        .compressed_size()
        .saturating_mul(16)
        .saturating_add(1 << 20);
    if entry.size() > limit {
        return Err(bad(format!(
            "claims {} bytes from {} compressed ones",
            entry.size(),
            entry.compressed_size()
        )));
    }
    let expect = entry.size();
    let mut w = File::create(out)
        .map_err(|e| BackendError::from_io(NAME, format!("cannot create {}", out.display()), e))?;
    let copied = io::copy(&mut (&mut entry).take(expect.saturating_add(1)), &mut w)
        .map_err(|e| bad(format!("is corrupt: {e}")))?;
    if copied != expect {
        return Err(bad(format!(
            "has a member of {copied} bytes that claims {expect}"
        )));
    }
    w.sync_all()
        .map_err(|e| BackendError::from_io(NAME, format!("cannot fsync {}", out.display()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in files {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn unzip_bytes(z: &[u8], key: &str) -> Result<Vec<u8>, BackendError> {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("a.zip"), dir.path().join("out"));
        std::fs::write(&src, z).unwrap();
        unzip(&src, key, &out)?;
        Ok(std::fs::read(out).unwrap())
    }

    #[test]
    fn the_bundle_is_found_in_the_zip() {
        let b = b"\x1f\x8bbundle";
        assert_eq!(
            unzip_bytes(&zip(&[("x.tar.gz", b)]), "k.tar.gz").unwrap(),
            b
        );
        let two = zip(&[("notes.txt", b"n"), ("dir/k.tar.gz", b)]);
        assert_eq!(unzip_bytes(&two, "host/k.tar.gz").unwrap(), b);
        let other = zip(&[("notes.txt", b"n"), ("some.tar.gz", b)]);
        assert_eq!(unzip_bytes(&other, "k.tar.gz").unwrap(), b);
        let ambiguous = zip(&[("a.tar.gz", b), ("b.tar.gz", b)]);
        let e = unzip_bytes(&ambiguous, "k.tar.gz").unwrap_err();
        assert!(e.to_string().contains("holds 2 files"), "{e}");
        let e = unzip_bytes(b"PK\x03\x04 not really", "k.tar.gz").unwrap_err();
        assert!(e.to_string().contains("cannot be read"), "{e}");
    }

    #[test]
    fn a_zip_bomb_is_refused_before_writing() {
        let zeros = vec![0u8; 20 << 20];
        let e = unzip_bytes(&zip(&[("k.tar.gz", &zeros)]), "k.tar.gz").unwrap_err();
        assert!(e.to_string().contains("compressed ones"), "{e}");
    }

    #[test]
    fn kinds_come_from_the_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for (bytes, want) in [
            (&b"\x1f\x8b\x08\x00rest"[..], "gzip"),
            (b"PK\x03\x04rest", "zip"),
            (b"<html>", "unknown"),
            (b"", "unknown"),
        ] {
            std::fs::write(&p, bytes).unwrap();
            let got = match sniff(&p).unwrap() {
                Kind::Gzip => "gzip",
                Kind::Zip => "zip",
                Kind::Unknown(_) => "unknown",
            };
            assert_eq!(got, want);
        }
    }
}
