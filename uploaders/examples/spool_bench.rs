//! Spool write and drain throughput; the driver is `bench/spool.sh`.
//!
//! ```text
//! cargo run --release -p ferry-uploaders --example spool_bench -- \
//!     small COUNT BYTES DIR [CONCURRENCY]
//! cargo run --release -p ferry-uploaders --example spool_bench -- \
//!     big MIB DIR [CONCURRENCY]
//! ```
//!
//! `small` spools COUNT entries of BYTES each, `big` one entry of MIB
//! MiB streamed in 1 MiB writes; then one drain ships everything to a
//! `dir` backend in `DIR/dest`. Every write is fsynced as in production
//! (entry, `entry.json`, directories, acks). Prints one `key=value` line.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use ferry_uploaders::spool::{DrainOptions, Limits, Origin, Spool};
use ferry_uploaders::{Backend, DirBackend, RetryPolicy};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spool_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: spool_bench small COUNT BYTES DIR [CONC] | big MIB DIR [CONC]";
    let (count, bytes, dir, conc) = match args.first().map(String::as_str) {
        Some("small") if args.len() >= 4 => (
            args[1].parse::<usize>()?,
            args[2].parse::<usize>()?,
            args[3].clone(),
            args.get(4),
        ),
        Some("big") if args.len() >= 3 => (
            1,
            args[1].parse::<usize>()? << 20,
            args[2].clone(),
            args.get(3),
        ),
        _ => return Err(usage.into()),
    };
    let concurrency = conc.map(|c| c.parse()).transpose()?.unwrap_or(2);
    let dir = Path::new(&dir);
    let spool = Spool::open(
        dir.join("spool"),
        Limits {
            max_bytes: u64::MAX,
            max_entries: usize::MAX,
        },
    )?;
    let dest: Arc<dyn Backend> = Arc::new(DirBackend::new(dir.join("dest"))?);
    let mut chunk = vec![0u8; bytes.min(1 << 20)];
    for b in chunk.iter_mut() {
        *b = fastrand::u8(..);
    }
    let destinations = vec!["dir".to_string()];
    let t = Instant::now();
    for i in 0..count {
        let key = format!("host-run{i:05}-ship-failed.tar.gz");
        let mut w = spool.writer(&key, &destinations, Origin::default())?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            // Differ per entry, so no two are the same bytes.
            chunk[0] = i as u8;
            w.write_all(&chunk[..n])?;
            left -= n;
        }
        w.commit()?;
    }
    let write_s = t.elapsed().as_secs_f64();
    let opts = DrainOptions {
        concurrency,
        retry: RetryPolicy::once(),
        include_parked: false,
    };
    let t = Instant::now();
    let report = spool.drain(&opts, &|_, _| Ok(dest.clone()))?;
    let drain_s = t.elapsed().as_secs_f64();
    let shipped = report.entries.iter().filter(|e| e.removed).count();
    if shipped != count || report.depth != 0 {
        return Err(format!("shipped {shipped} of {count}, {} left", report.depth).into());
    }
    let total = (count * bytes) as f64 / (1 << 20) as f64;
    println!(
        "entries={count} bytes_each={bytes} concurrency={concurrency} write_s={write_s:.3} \
         write_per_s={:.1} write_mib_s={:.1} drain_s={drain_s:.3} drain_per_s={:.1} drain_mib_s={:.1}",
        count as f64 / write_s,
        total / write_s,
        count as f64 / drain_s,
        total / drain_s
    );
    Ok(())
}
