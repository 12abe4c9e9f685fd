//! Bundles files with ferry's `write_bundle` and reports the throughput;
//! the benchmark driver is `bench/bundle.sh`.
//!
//! ```text
//! cargo run --release -p ferry-uploaders --example bundle_bench -- \
//!     [--threads N] [--level L] [--block-kib K] [--secret S]... [--verify] OUT FILE...
//! ```
//!
//! Prints one `key=value` line: input bytes, output bytes, seconds, MiB/s
//! (of input), and with `--verify` the time `BundleReader` takes to open and
//! verify the result.
//!
//! `--baseline` instead writes the plain `tar` crate archive through
//! flate2's `GzEncoder` (zlib-rs backend, one thread, one gzip member) at
//! `--level`, with no redaction, hashing or manifest: the starting point
//! the bundle writer is measured against.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ferry_uploaders::bundle::{BundleOptions, BundleReader, write_bundle};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bundle_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = BundleOptions {
        max_file_bytes: None,
        ..BundleOptions::default()
    };
    let mut verify = false;
    let mut baseline = false;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--threads" => opts.threads = value("--threads")?.parse()?,
            "--level" => opts.level = value("--level")?.parse()?,
            "--block-kib" => opts.block_size = value("--block-kib")?.parse::<usize>()? << 10,
            "--secret" => opts.secrets.push(value("--secret")?),
            "--verify" => verify = true,
            "--baseline" => baseline = true,
            _ if a.starts_with("--") => return Err(format!("unknown option {a}").into()),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.len() < 2 {
        return Err("usage: bundle_bench [options] OUT FILE...".into());
    }
    let out = paths.remove(0);
    let input: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<Result<u64, _>>()?;

    if baseline {
        let start = Instant::now();
        let file = std::fs::File::create(&out)?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::new(opts.level));
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        for p in &paths {
            let name = Path::new(p)
                .file_name()
                .ok_or("input without a file name")?;
            tar.append_path_with_name(p, Path::new("logs").join(name))?;
        }
        tar.into_inner()?.finish()?.sync_all()?;
        let secs = start.elapsed().as_secs_f64();
        let output = std::fs::metadata(&out)?.len();
        println!(
            "engine=flate2-baseline level={} input_bytes={input} output_bytes={output} seconds={secs:.3} mib_per_s={:.1}",
            opts.level,
            input as f64 / (1 << 20) as f64 / secs
        );
        return Ok(());
    }

    let start = Instant::now();
    let manifest = write_bundle(
        &out,
        opts.clone(),
        serde_json::json!({"bench": true}),
        |w| {
            for p in &paths {
                let name = Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("input");
                w.add_path(&format!("logs/{name}"), p)?;
            }
            Ok(())
        },
    )?;
    let secs = start.elapsed().as_secs_f64();
    let output = std::fs::metadata(&out)?.len();
    let redacted: u64 = manifest.files.iter().map(|f| f.redacted).sum();
    print!(
        "threads={} level={} block_kib={} input_bytes={input} output_bytes={output} seconds={secs:.3} mib_per_s={:.1} redacted={redacted}",
        if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        },
        opts.level,
        opts.block_size >> 10,
        input as f64 / (1 << 20) as f64 / secs,
    );
    if verify {
        let start = Instant::now();
        let report = BundleReader::open(&out)?.verify()?;
        let vsecs = start.elapsed().as_secs_f64();
        if !report.is_ok() {
            return Err(format!("verify failed: {}", report.summary()).into());
        }
        print!(" verify_seconds={vsecs:.3}");
    }
    println!();
    Ok(())
}
