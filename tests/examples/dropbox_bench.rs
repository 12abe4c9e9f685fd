//! Throughput and peak memory of the Dropbox backend: one bundle put
//! (upload session) and fetched back through the fake Dropbox on
//! 127.0.0.1. The fake runs in a child process, so this process's peak RSS
//! is the client's alone.
//!
//! `cargo run --release -p ferry-tests --example dropbox_bench -- [SIZE_MIB] [CHUNK_MIB]`

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ferry_tests::fakes::dropbox::FakeDropbox;
use ferry_uploaders::backends::dropbox::Secret;
use ferry_uploaders::{Backend, DropboxBackend, DropboxConfig, DropboxCredentials};

const TOKEN: &str = "sl.bench-token";
const MIB: u64 = 1 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve();
    }
    let size_mib: u64 = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let chunk_mib: u64 = args.get(2).map_or(Ok(48), |s| s.parse())?;

    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the fake")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("fake stdout")?).read_line(&mut line)?;
    let mut urls = line.split_whitespace();
    let (Some(api), Some(content)) = (urls.next(), urls.next()) else {
        bail!("the fake said {line:?}");
    };

    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))?;
    let src = dir.path().join("bench.tar.gz");
    write_random(&src, size_mib * MIB)?;
    let rss_start = peak_rss_mib();

    let cfg = DropboxConfig {
        folder: "/bench".into(),
        chunk_mib,
        upload_cutoff_mib: chunk_mib.min(150),
        api_url: api.into(),
        content_url: content.into(),
        ..DropboxConfig::default()
    };
    let b = DropboxBackend::new(cfg, DropboxCredentials::Token(Secret::new(TOKEN)))?;
    let t = Instant::now();
    b.put("bench.tar.gz", &src)?;
    let put_s = t.elapsed().as_secs_f64();
    let rss_put = peak_rss_mib();
    let back = dir.path().join("back.tar.gz");
    let t = Instant::now();
    b.get("bench.tar.gz", &back)?;
    let get_s = t.elapsed().as_secs_f64();
    let rss_get = peak_rss_mib();
    if !same_bytes(&src, &back)? {
        bail!("the fetched bundle differs");
    }
    drop(child.stdin.take());
    child.wait()?;

    let mib = size_mib as f64;
    println!(
        "| size MiB | chunk MiB | put s | put MiB/s | get s | get MiB/s | peak RSS MiB (before / after put / after get) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {size_mib} | {chunk_mib} | {put_s:.2} | {:.0} | {get_s:.2} | {:.0} | {rss_start:.1} / {rss_put:.1} / {rss_get:.1} |",
        mib / put_s,
        mib / get_s
    );
    Ok(())
}

/// The child: the fake until stdin closes.
fn serve() -> Result<()> {
    let fake = FakeDropbox::start()?;
    fake.add_token(TOKEN);
    println!("{} {}", fake.api_url(), fake.content_url());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}

/// Incompressible bytes, written 1 MiB at a time.
fn write_random(path: &Path, len: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..len / MIB {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as f64 / 1024.0
}
