//! `ferry pull`: list the bundles in a backend, fetch the chosen ones,
//! verify every file against the manifest's sha256 and extract them safely.
//!
//! Everything here talks to a `&dyn Backend` opened by
//! [`crate::destinations`], so every backend lists, filters and verifies
//! the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_uploaders::bundle::ExtractLimits;
use ferry_uploaders::{Backend, BackendError, BundleError, BundleReader};
use serde::Serialize;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Destination(#[from] crate::destinations::DestinationError),
    #[error(
        "--since {0:?} is neither a duration (30m, 12h, 7d) nor a real date (2026-01-31, 2026-01-31T12:00:00Z or 2026-01-31T13:00:00+01:00)"
    )]
    BadSince(String),
    /// The downloaded copy failed its checks and was deleted: the error
    /// names the object in the store, the copy no longer exists.
    #[error("{key} in the {backend} store was refused and its download deleted: {source}")]
    Refused {
        key: String,
        backend: String,
        source: BundleError,
    },
    #[error("cannot create {path}: {error}; choose a writable --extract directory")]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Never written over: it may be the store's own copy (`--extract`
    /// pointed at a dir store) or another bundle of the same name.
    #[error(
        "{path} exists already (the store itself, an earlier pull, or a bundle of the same name elsewhere in the store); it is left alone: choose a new --extract directory"
    )]
    Exists { path: PathBuf },
}

/// A bundle as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// Last modified, Unix seconds.
    pub modified: u64,
    /// The same time as RFC 3339 UTC, for people reading the JSON.
    pub modified_at: String,
    pub host: Option<String>,
    pub run_id: Option<String>,
    pub stage: Option<String>,
    pub result: Option<String>,
}

/// Which bundles to pick.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub run: Option<String>,
    pub host: Option<String>,
    pub result: Option<String>,
    pub since: Option<SystemTime>,
    pub newest: Option<usize>,
}

/// Splits `<host>-<run-id>-<stage>-<result>.tar.gz` (run ids look like
/// `20261203T120000Z-abc123`; hosts and stages may contain `-`).
pub fn parse_name(key: &str) -> Option<(String, String, String, String)> {
    let base = key.rsplit('/').next()?;
    let stem = base.strip_suffix(".tar.gz")?;
    let b = stem.as_bytes();
    for i in 0..b.len() {
        if i > 0 && b[i - 1] != b'-' {
            continue;
        }
        let rest = &stem[i..];
        let rb = rest.as_bytes();
        let is_run = rb.len() > 24
            && rb[..8].iter().all(u8::is_ascii_digit)
            && rb[8] == b'T'
            && rb[9..15].iter().all(u8::is_ascii_digit)
            && rb[15] == b'Z'
            && rb[16] == b'-';
        if !is_run || i == 0 {
            continue;
        }
        let host = &stem[..i - 1];
        let run_end = 17 + rest[17..].find('-')?;
        let run = &rest[..run_end];
        let tail = &rest[run_end + 1..];
        let (stage, result) = tail.rsplit_once('-')?;
        return Some((host.into(), run.into(), stage.into(), result.into()));
    }
    None
}

/// Parses `--since`: `30m`, `12h`, `7d`, `2026-01-31`, `2026-01-31T12:00:00Z`.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, PullError> {
    let bad = || PullError::BadSince(s.to_string());
    let t = s.trim();
    let unit = t.chars().last().filter(|c| "smhdw".contains(*c));
    let count = unit.and_then(|_| t[..t.len() - 1].parse::<u64>().ok());
    if let (Some(unit), Some(n)) = (unit, count) {
        {
            let mult = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => 604_800,
            };
            return now
                .checked_sub(Duration::from_secs(n.saturating_mul(mult)))
                .ok_or_else(bad);
        }
    }
    date_time(t).ok_or_else(bad)
}

/// `2026-01-31`, `2026-01-31T12:00[:00]` with `Z`, `+01:00` or no zone
/// (UTC); only real dates and times, from 1970 to 9999.
fn date_time(t: &str) -> Option<SystemTime> {
    let (date, time) = match t.split_once(['T', 't', ' ']) {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let num = |p: &str, digits: std::ops::RangeInclusive<usize>| -> Option<i64> {
        (digits.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let mut dp = date.split('-');
    let (y, mo, d) = (
        num(dp.next()?, 4..=4)?,
        num(dp.next()?, 1..=2)?,
        num(dp.next()?, 1..=2)?,
    );
    if dp.next().is_some() || y < 1970 || !(1..=12).contains(&mo) {
        return None;
    }
    // A real date comes back from its day number unchanged (2026-02-30
    // would come back as March 2nd).
    let mut secs = ferry_uploaders::utc::days_from_civil(y, mo, d) * 86_400;
    let (ry, rm, rd, ..) = ferry_uploaders::utc::civil_from_unix(secs);
    if (ry, i64::from(rm), i64::from(rd)) != (y, mo, d) {
        return None;
    }
    if let Some(tm) = time {
        let (clock, offset) = if let Some(c) = tm.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = tm.rfind(['+', '-']) {
            let (h, m) = tm[i + 1..].split_once(':')?;
            let (h, m) = (num(h, 2..=2)?, num(m, 2..=2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if tm.as_bytes()[i] == b'-' { -1 } else { 1 };
            (&tm[..i], sign * (h * 3600 + m * 60))
        } else {
            (tm, 0)
        };
        let mut cp = clock.split(':');
        let (h, m) = (num(cp.next()?, 2..=2)?, num(cp.next()?, 2..=2)?);
        // A leap second (`:60`) is the next second.
        let sec = match cp.next() {
            Some(p) => num(p.split('.').next()?, 2..=2)?,
            None => 0,
        };
        if cp.next().is_some() || h > 23 || m > 59 || sec > 60 {
            return None;
        }
        secs += h * 3600 + m * 60 + sec - offset;
    }
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// The bundles in `backend` that pass `filter`, newest first.
pub fn list(backend: &dyn Backend, filter: &Filter) -> Result<Vec<Listed>, PullError> {
    let mut out: Vec<Listed> = backend
        .list("")?
        .into_iter()
        .filter(|o| o.key.ends_with(".tar.gz"))
        .map(|o| {
            let parsed = parse_name(&o.key);
            let modified = o
                .modified
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let (host, run_id, stage, result) = match parsed {
                Some((h, r, s, res)) => (Some(h), Some(r), Some(s), Some(res)),
                None => (None, None, None, None),
            };
            Listed {
                key: o.key,
                size: o.size,
                modified,
                modified_at: ferry_uploaders::utc::rfc3339_secs(
                    i64::try_from(modified).unwrap_or(i64::MAX),
                ),
                host,
                run_id,
                stage,
                result,
            }
        })
        .filter(|l| {
            let field = |want: &Option<String>, have: &Option<String>| match want {
                None => true,
                Some(w) => have
                    .as_deref()
                    .map_or(l.key.contains(w.as_str()), |h| h == w),
            };
            let since_ok = filter.since.is_none_or(|s| {
                let s = s.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                l.modified >= s
            });
            let run_ok = match &filter.run {
                None => true,
                Some(w) => {
                    l.run_id
                        .as_deref()
                        .is_some_and(|r| r.starts_with(w.as_str()))
                        || l.key.contains(w.as_str())
                }
            };
            run_ok && field(&filter.host, &l.host) && field(&filter.result, &l.result) && since_ok
        })
        .collect();
    out.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| b.key.cmp(&a.key)));
    if let Some(n) = filter.newest {
        out.truncate(n);
    }
    Ok(out)
}

/// The listing as a table for people: a header, then one aligned row per
/// bundle, newest first. Names ferry did not write show `-` in the fields
/// it could not read from them.
pub fn table(listed: &[Listed]) -> String {
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|l| {
            let or_dash = |f: &Option<String>| f.clone().unwrap_or_else(|| "-".into());
            vec![
                l.modified_at.clone(),
                ferry_uploaders::progress::human(l.size),
                or_dash(&l.result),
                or_dash(&l.host),
                or_dash(&l.run_id),
                l.key.clone(),
            ]
        })
        .collect();
    crate::table::render(
        &["SHIPPED (UTC)", "SIZE", "RESULT", "HOST", "RUN", "KEY"],
        &rows,
    )
}

/// What [`fetch`] did with one bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    pub key: String,
    pub bundle: PathBuf,
    pub extracted_to: PathBuf,
    pub files_verified: usize,
    pub bytes_extracted: u64,
}

/// Downloads `item` into `dest`, verifies every file against the manifest
/// and extracts it beside the download (`<dest>/<name without .tar.gz>/`).
/// A bundle that fails verification is deleted and nothing is extracted.
pub fn fetch(
    backend: &dyn Backend,
    item: &Listed,
    dest: &Path,
    limits: &ExtractLimits,
) -> Result<Pulled, PullError> {
    std::fs::create_dir_all(dest).map_err(|error| PullError::Create {
        path: dest.to_path_buf(),
        error,
    })?;
    let base = item.key.rsplit('/').next().unwrap_or(&item.key);
    let bundle = dest.join(base);
    if std::fs::symlink_metadata(&bundle).is_ok() {
        return Err(PullError::Exists { path: bundle });
    }
    backend.get(&item.key, &bundle)?;
    let checked = BundleReader::open(&bundle).and_then(|r| {
        let report = r.verify()?.into_result(&bundle)?;
        Ok((r, report))
    });
    let (reader, report) = match checked {
        Ok(x) => x,
        Err(source) => {
            let _ = std::fs::remove_file(&bundle);
            return Err(PullError::Refused {
                key: item.key.clone(),
                backend: backend.name().to_string(),
                source,
            });
        }
    };
    let dir = dest.join(base.strip_suffix(".tar.gz").unwrap_or(base));
    let summary = match reader.extract_to(&dir, limits) {
        Ok(s) => s,
        Err(e) => {
            // Nothing of a bundle that could not be extracted stays, so
            // the same pull can be run again.
            let _ = std::fs::remove_file(&bundle);
            return Err(match e {
                e @ BundleError::TargetNotEmpty { .. } => e.into(),
                source => PullError::Refused {
                    key: item.key.clone(),
                    backend: backend.name().to_string(),
                    source,
                },
            });
        }
    };
    Ok(Pulled {
        key: item.key.clone(),
        bundle,
        extracted_to: dir,
        files_verified: report.checked,
        bytes_extracted: summary.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_from_both_ends() {
        assert_eq!(
            parse_name("ci-runner-7-20261203T120000Z-abc123-prepare-restore-called_off.tar.gz"),
            Some((
                "ci-runner-7".into(),
                "20261203T120000Z-abc123".into(),
                "prepare-restore".into(),
                "called_off".into()
            ))
        );
        assert_eq!(
            parse_name("x/h-20261203T120000Z-abc123-dump-failed.tar.gz").map(|p| p.0),
            Some("h".into())
        );
        assert_eq!(parse_name("random.tar.gz"), None);
        assert_eq!(
            parse_name("20261203T120000Z-abc123-dump-failed.tar.gz"),
            None
        );
    }

    #[test]
    fn table_aligns_columns_and_dashes_foreign_names() {
        let listed = vec![
            Listed {
                key: "ci-a-20261203T120000Z-abc123-restore-failed.tar.gz".into(),
                size: 3 << 20,
                modified: 1_796_326_137,
                modified_at: "2026-12-03T19:28:57Z".into(),
                host: Some("ci-a".into()),
                run_id: Some("20261203T120000Z-abc123".into()),
                stage: Some("restore".into()),
                result: Some("failed".into()),
            },
            Listed {
                key: "odd.tar.gz".into(),
                size: 10,
                modified: 0,
                modified_at: "1970-01-01T00:00:00Z".into(),
                host: None,
                run_id: None,
                stage: None,
                result: None,
            },
        ];
        let t = table(&listed);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with("SHIPPED (UTC)         SIZE     RESULT  HOST  RUN"),
            "{t}"
        );
        assert!(
            lines[1].starts_with(
                "2026-12-03T19:28:57Z  3.0 MiB  failed  ci-a  20261203T120000Z-abc123  ci-a-"
            ),
            "{t}"
        );
        assert!(
            lines[2].starts_with(
                "1970-01-01T00:00:00Z  10 B     -       -     -                        odd.tar.gz"
            ),
            "{t}"
        );
        let key_col = lines[0].find("KEY").unwrap();
        assert_eq!(lines[2].find("odd.tar.gz"), Some(key_col), "{t}");
    }

    /// Regressions: a huge year overflowed (a panic), impossible dates
    /// and times were taken, and offsets were refused.
    #[test]
    fn since_takes_only_real_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for bad in [
            "99999999999999-01-01",
            "2026-02-30",
            "2025-02-29",
            "2026-01-01T99:99:99Z",
            "2026-01-01T-5:00",
            "2026-01-01T12:00:00+25:00",
            "1969-12-31",
            "2026-1-1-1",
            "",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad:?} was taken");
        }
        let at = |s: &str| {
            parse_since(s, now)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(at("2024-02-29"), 1_709_164_800);
        assert_eq!(at("2026-12-04T16:00:00+01:00"), at("2026-12-04T15:00:00Z"));
        assert_eq!(at("2026-12-04T16:00-02:30"), at("2026-12-04T18:30:00Z"));
        assert_eq!(at("2016-12-31T23:59:60Z"), at("2017-01-01T00:00:00Z"));
        assert_eq!(at("2026-12-04T16:00:00.250Z"), at("2026-12-04T16:00:00Z"));
    }

    #[test]
    fn since_accepts_durations_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            parse_since("2026-01-31T12:00:00Z", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_769_860_800)
        );
        assert_eq!(
            parse_since("1970-01-02", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(86_400)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-01",
            "5x",
            "2026-01-01T1:2:3:4",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
