//! Puts one file into an S3-compatible store with ferry's `s3` backend and
//! reports the throughput; the benchmark driver is `bench/s3.sh`.
//!
//! ```text
//! AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… \
//! cargo run --release -p ferry-uploaders --example s3_bench -- \
//!     --endpoint http://127.0.0.1:8014 --bucket B [--part-mib N] \
//!     [--concurrency N] [--threshold-mib N] [--get DEST] KEY FILE
//! ```
//!
//! Prints one `key=value` line: bytes, seconds, MiB/s; with `--get DEST`
//! the object is then downloaded (and verified) into DEST and timed too.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ferry_uploaders::{Backend, S3Backend, S3Config};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = S3Config::default();
    let mut get = None;
    let mut rest = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--endpoint" => cfg.endpoint = value()?,
            "--bucket" => cfg.bucket = value()?,
            "--part-mib" => cfg.part_size_mib = value()?.parse()?,
            "--threshold-mib" => cfg.multipart_threshold_mib = value()?.parse()?,
            "--concurrency" => cfg.concurrency = value()?.parse()?,
            "--get" => get = Some(PathBuf::from(value()?)),
            _ => rest.push(a),
        }
    }
    let [key, file] = rest.as_slice() else {
        return Err("usage: s3_bench --endpoint URL --bucket B [options] KEY FILE".into());
    };
    let backend = S3Backend::from_env(&cfg, &|k| std::env::var(k).ok())?;
    let t = Instant::now();
    let receipt = backend.put(key, &PathBuf::from(file))?;
    let secs = t.elapsed().as_secs_f64();
    let mib = receipt.size as f64 / 1048576.0;
    let mut line = format!(
        "bytes={} seconds={secs:.3} mib_per_s={:.1}",
        receipt.size,
        mib / secs
    );
    if let Some(dest) = get {
        let t = Instant::now();
        backend.get(key, &dest)?;
        let secs = t.elapsed().as_secs_f64();
        line.push_str(&format!(
            " get_seconds={secs:.3} get_mib_per_s={:.1}",
            mib / secs
        ));
    }
    println!("{line}");
    Ok(())
}
