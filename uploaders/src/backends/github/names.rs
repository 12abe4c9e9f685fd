//! Keys ↔ artifact names.
//!
//! An artifact name may not hold `" : < > | * ? \ /` nor CR/LF, and it is
//! unique per workflow run for good: an upload whose finalize failed keeps
//! its name reserved yet invisible, so nothing can take it again. A key
//! therefore maps to a few *slots*: the name itself, then the same name
//! with `~1`, `~2`, … before `.tar.gz`. The characters names refuse, and
//! `%` and `~` themselves, are written `%XX`, so every name maps back to
//! exactly one key and slot.

/// Names one key may use: the plain one and three retries.
pub const SLOTS: u32 = 4;

const EXT: &str = ".tar.gz";

/// Characters written as `%XX` in a name.
pub fn reserved(c: char) -> bool {
    matches!(
        c,
        '"' | ':' | '<' | '>' | '|' | '*' | '?' | '\\' | '/' | '%' | '~'
    ) || c.is_control()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if reserved(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'~' => return None,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The artifact name of `key` in `slot` (0 = the plain name).
pub fn artifact_name(prefix: &str, key: &str, slot: u32) -> String {
    let (stem, ext) = match key.strip_suffix(EXT) {
        Some(stem) => (stem, EXT),
        None => (key, ""),
    };
    let mut name = format!("{prefix}{}", escape(stem));
    if slot > 0 {
        name.push_str(&format!("~{slot}"));
    }
    name.push_str(ext);
    name
}

/// The key and slot an artifact name stands for, if it is one of ours.
pub fn key_of(prefix: &str, name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let (stem, ext) = match rest.strip_suffix(EXT) {
        Some(stem) => (stem, EXT),
        None => (rest, ""),
    };
    let (stem, slot) = match stem.rsplit_once('~') {
        Some((s, n)) => {
            let slot: u32 = n.parse().ok().filter(|n| (1..SLOTS).contains(n))?;
            if n.starts_with('0') {
                return None;
            }
            (s, slot)
        }
        None => (stem, 0),
    };
    let key = format!("{}{ext}", unescape(stem)?);
    super::super::validate_key("github", &key).ok()?;
    Some((key, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_names_stay_readable() {
        let key = "ci-7-20261203T120000Z-abc123-verify-succeeded.tar.gz";
        assert_eq!(artifact_name("ferry-", key, 0), format!("ferry-{key}"));
        assert_eq!(
            artifact_name("ferry-", key, 2),
            "ferry-ci-7-20261203T120000Z-abc123-verify-succeeded~2.tar.gz"
        );
    }

    #[test]
    fn every_name_maps_back_to_one_key_and_slot() {
        for key in [
            "a.tar.gz",
            "host/run/x.tar.gz",
            "odd: <name>|*?\"~%41.tar.gz",
            "no-extension",
            "ü/ß~3",
        ] {
            for slot in 0..SLOTS {
                let name = artifact_name("p-", key, slot);
                assert!(!name.chars().any(|c| reserved(c) && c != '%' && c != '~'));
                assert_eq!(key_of("p-", &name), Some((key.to_string(), slot)), "{name}");
            }
        }
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "coverage-report",
            "p-x~9.tar.gz",
            "p-x~01.tar.gz",
            "p-x~.tar.gz",
            "p-bad%zz.tar.gz",
            "p-a~b~1.tar.gz",
            "p-..",
            "p-",
        ] {
            assert_eq!(key_of("p-", name), None, "{name}");
        }
    }
}
