//! Benchmark helper for `bench/github.sh`: the GitHub artifacts fake in one
//! process and ferry's `github` backend in another, so `/usr/bin/time`
//! measures the backend alone.
//!
//! ```text
//! github_bench serve           print the environment (KEY=VALUE lines, then
//!                              READY) and serve until stdin closes
//! github_bench put KEY FILE    upload FILE as KEY (environment from serve)
//! github_bench get KEY DEST    download KEY to DEST
//! ```
//!
//! `BENCH_BLOCK_KIB` and `BENCH_CONCURRENCY` set the backend's block size
//! and blocks in flight.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ferry_tests::fakes::github::GithubFake;
use ferry_uploaders::{Backend, GithubBackend, GithubConfig};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => serve(),
        ["put", key, file] => {
            let b = backend()?;
            let t = Instant::now();
            let r = b.put(key, Path::new(file))?;
            report("put", r.size, t);
            Ok(())
        }
        ["get", key, dest] => {
            let b = backend()?;
            let t = Instant::now();
            b.get(key, Path::new(dest))?;
            report("get", std::fs::metadata(dest)?.len(), t);
            Ok(())
        }
        _ => bail!("usage: github_bench serve | put KEY FILE | get KEY DEST"),
    }
}

fn serve() -> Result<()> {
    let fake = GithubFake::start()?;
    let mut out = std::io::stdout().lock();
    for (k, v) in fake.actions_env().into_iter().chain(fake.rest_env()) {
        writeln!(out, "{k}={v}")?;
    }
    writeln!(out, "READY")?;
    out.flush()?;
    drop(out);
    // Serve until the script closes our stdin.
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}

fn backend() -> Result<GithubBackend> {
    let num = |k: &str, d: u64| -> Result<u64> {
        match std::env::var(k) {
            Ok(v) => v.parse().with_context(|| format!("{k}={v:?}")),
            Err(_) => Ok(d),
        }
    };
    let config = GithubConfig {
        block_kib: num("BENCH_BLOCK_KIB", GithubConfig::default().block_kib)?,
        upload_concurrency: u32::try_from(num("BENCH_CONCURRENCY", 4)?)?,
        ..GithubConfig::default()
    };
    Ok(GithubBackend::from_env(&config, &|k| {
        std::env::var(k).ok()
    })?)
}

fn report(what: &str, bytes: u64, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!(
        "{what} {bytes} bytes in {s:.2} s: {:.0} MiB/s",
        bytes as f64 / (1 << 20) as f64 / s
    );
}
