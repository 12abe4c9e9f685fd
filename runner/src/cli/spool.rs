//! `ferry spool list|show|retry|drop|add`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use ferry::config::Config;
use ferry_uploaders::spool::{Added, EntryStatus, Origin, Scanned, Spool};

use super::SpoolCommand;

pub fn run(config: &Config, command: SpoolCommand) -> anyhow::Result<ExitCode> {
    let spool = ferry::shipping::open(config)?;
    let mut out = std::io::stdout().lock();
    match command {
        SpoolCommand::List { json } => list(&spool, json, &mut out)?,
        SpoolCommand::Show { id, json } => show(&spool, &id, json, &mut out)?,
        SpoolCommand::Retry { id, all } => {
            let ids: Vec<String> = match id {
                Some(id) if !all => vec![id],
                _ => spool
                    .entries()?
                    .into_iter()
                    .filter(|e| !e.parked().is_empty())
                    .map(|e| e.meta.id)
                    .collect(),
            };
            for id in &ids {
                let dests = spool.retry(id)?;
                eprintln!(
                    "ferry: {id} will be tried again for {} by the next `ferry ship`",
                    dests.join(", ")
                );
            }
            if ids.is_empty() {
                eprintln!("ferry: no entry is parked");
            }
        }
        SpoolCommand::Drop { id } => {
            let d = spool.drop_entry(&id)?;
            let what = if d.quarantined {
                "quarantined entry".to_string()
            } else {
                format!("entry ({})", d.key.as_deref().unwrap_or("damaged"))
            };
            let never = if d.never_shipped_to.is_empty() {
                String::new()
            } else {
                format!("; it never reached {}", d.never_shipped_to.join(", "))
            };
            tracing::warn!(
                "dropped {what} {} ({} bytes) from the spool {}{never}",
                d.id,
                d.bytes,
                spool.root().display()
            );
        }
        SpoolCommand::Add { file, key } => {
            let key = match key {
                Some(k) => k,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .with_context(|| {
                        format!("{} has no usable file name; give --key", file.display())
                    })?,
            };
            match spool.add_file(&file, &key, &config.ship.backends, Origin::default())? {
                Added::New(c) => {
                    for e in &c.evicted {
                        eprintln!(
                            "ferry: the size cap evicted {} ({})",
                            e.id,
                            e.reason.as_str()
                        );
                    }
                    eprintln!(
                        "ferry: spooled {} as {} for {}; `ferry ship` sends it",
                        file.display(),
                        c.entry.meta.id,
                        config.ship.backends.join(", ")
                    );
                    writeln!(out, "{}", c.entry.meta.id)?;
                }
                Added::AlreadySpooled(e) => {
                    eprintln!("ferry: {} waits in the spool already as {}", key, e.meta.id);
                    writeln!(out, "{}", e.meta.id)?;
                }
            }
        }
    }
    out.flush().context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn age(created_unix_nano: u64) -> String {
    let now = ferry::telemetry::ids::now_unix_nano();
    let s = now.saturating_sub(created_unix_nano) / 1_000_000_000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn pending_of(e: &EntryStatus) -> String {
    let p = e.pending();
    if p.is_empty() {
        "-".into()
    } else {
        p.join(",")
    }
}

fn list(spool: &Spool, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let scanned = spool.scan()?;
    let quarantined = spool.quarantined()?;
    if json {
        let entries: Vec<serde_json::Value> = scanned
            .iter()
            .map(|s| match s {
                Scanned::Entry(e) => serde_json::json!({
                    "id": e.meta.id, "state": e.state(), "key": e.meta.key,
                    "size": e.meta.size, "sha256": e.meta.sha256,
                    "created_unix_nano": e.meta.created_unix_nano,
                    "pending": e.pending(), "parked": e.parked(),
                    "expendable": e.meta.expendable,
                }),
                Scanned::Bad { name, reason, .. } => serde_json::json!({
                    "id": name, "state": "damaged", "reason": reason,
                }),
                Scanned::Newer { name, format, .. } => serde_json::json!({
                    "id": name, "state": "newer_format", "format": format,
                }),
            })
            .collect();
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({
                "spool": spool.root(), "entries": entries, "quarantined": quarantined,
            }),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    if scanned.is_empty() && quarantined.is_empty() {
        eprintln!("ferry: the spool {} is empty", spool.root().display());
        return Ok(());
    }
    let dash = || "-".to_string();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for s in &scanned {
        rows.push(match s {
            Scanned::Entry(e) => vec![
                e.meta.id.clone(),
                e.state().to_string(),
                kind_of(e).into(),
                ferry_uploaders::progress::human(e.meta.size),
                age(e.meta.created_unix_nano),
                pending_of(e),
                e.meta.key.clone(),
            ],
            Scanned::Bad { name, reason, .. } => vec![
                name.clone(),
                "damaged".into(),
                dash(),
                dash(),
                dash(),
                dash(),
                format!("({reason})"),
            ],
            Scanned::Newer { name, format, .. } => vec![
                name.clone(),
                format!("newer-format-{format}"),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
            ],
        });
    }
    for q in &quarantined {
        rows.push(vec![
            q.name.clone(),
            "quarantined".into(),
            dash(),
            ferry_uploaders::progress::human(q.bytes),
            age(q.quarantined_unix_nano),
            dash(),
            format!("({})", q.reason),
        ]);
    }
    out.write_all(
        ferry::table::render(
            &["ID", "STATE", "KIND", "SIZE", "AGE", "WAITS FOR", "KEY"],
            &rows,
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// A report page is expendable: the cap evicts it before any bundle.
fn kind_of(e: &EntryStatus) -> &'static str {
    if e.meta.expendable { "page" } else { "bundle" }
}

fn show(spool: &Spool, id: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let scanned = match spool.get(id) {
        Ok(s) => s,
        Err(e) => {
            if let Some(q) = spool.quarantined()?.into_iter().find(|q| q.name == id) {
                if json {
                    serde_json::to_writer_pretty(&mut *out, &q)?;
                    writeln!(out)?;
                } else {
                    writeln!(
                        out,
                        "{id}: quarantined\n  path: {}\n  reason: {}\n  drop it with: ferry spool drop {id}",
                        q.path.display(),
                        q.reason
                    )?;
                }
                return Ok(());
            }
            return Err(e.into());
        }
    };
    let e = match scanned {
        Scanned::Entry(e) => e,
        Scanned::Bad { reason, path, .. } => {
            writeln!(
                out,
                "{id}: damaged ({reason}); the next `ferry ship` quarantines it\n  path: {}",
                path.display()
            )?;
            return Ok(());
        }
        Scanned::Newer { format, .. } => {
            writeln!(out, "{id}: format {format}, written by a newer ferry")?;
            return Ok(());
        }
    };
    if json {
        serde_json::to_writer_pretty(&mut *out, &e)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{}: {}", e.meta.id, e.state())?;
    writeln!(out, "  key: {}", ferry::printable::one_line(&e.meta.key))?;
    if e.meta.expendable {
        writeln!(
            out,
            "  kind: report page (the size cap evicts it before any bundle)"
        )?;
    }
    writeln!(
        out,
        "  size: {} bytes, sha256 {}",
        e.meta.size, e.meta.sha256
    )?;
    writeln!(out, "  spooled: {} ago", age(e.meta.created_unix_nano))?;
    writeln!(out, "  data: {}", e.data_path().display())?;
    if let Some(r) = &e.meta.origin.run_id {
        writeln!(out, "  run: {r}")?;
    }
    for d in &e.meta.destinations {
        if let Some(a) = e.ack(d) {
            writeln!(out, "  {d}: shipped to {}", a.receipt.location)?;
            if let Some(l) = a.link.as_deref().filter(|l| *l != a.receipt.location) {
                writeln!(out, "    link: {l}")?;
            }
        } else if let Some(f) = e.failure(d) {
            let state = if f.permanent { "parked" } else { "waiting" };
            writeln!(
                out,
                "  {d}: {state} ({}): {}",
                ferry_uploaders::spool::attempts_text(f.attempts),
                f.error
            )?;
            if f.permanent {
                writeln!(out, "    once fixed: ferry spool retry {}", e.meta.id)?;
            }
        } else {
            writeln!(out, "  {d}: waiting (not tried yet)")?;
        }
    }
    Ok(())
}
