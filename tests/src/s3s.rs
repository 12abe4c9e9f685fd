//! A real S3 server for tests: s3s-fs 0.14.1 on 127.0.0.1, a free port,
//! a fresh data directory, access keys it checks (SigV4 and checksums).
//!
//! Buckets are directories of the data directory and objects plain files
//! in them, so a test compares what landed byte for byte.
//!
//! The binary comes from `FERRY_S3S_FS` (set by `./lab test`: then a
//! missing binary fails the test), else the lab's cache
//! `/var/cache/ferry-ci/tools/s3s-fs-0.14.1/bin/s3s-fs`, else `PATH`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where `./lab` installs s3s-fs.
pub const CACHED: &str = "/var/cache/ferry-ci/tools/s3s-fs-0.14.1/bin/s3s-fs";
/// How to get it by hand.
pub const INSTALL: &str = "cargo install s3s-fs@0.14.1 --features binary --locked --root /var/cache/ferry-ci/tools/s3s-fs-0.14.1 (or run sudo ./lab test)";

pub const ACCESS_KEY: &str = "AKIAFERRYTEST0000001";
pub const SECRET_KEY: &str = "ferry/test+Secret/KEY0123456789abcdefghij";

/// The s3s-fs binary, `None` when there is none and none is required.
pub fn binary() -> Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os("FERRY_S3S_FS") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "FERRY_S3S_FS={} does not exist; install it with: {INSTALL}",
                p.display()
            );
        }
        return Ok(Some(p));
    }
    if Path::new(CACHED).is_file() {
        return Ok(Some(CACHED.into()));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    Ok(on_path)
}

/// A running s3s-fs; killed (by its pid) when dropped.
pub struct S3sFs {
    child: Child,
    port: u16,
    data: tempfile::TempDir,
    log: PathBuf,
}

impl S3sFs {
    /// Starts s3s-fs with `buckets` created. `Ok(None)` (after a loud
    /// line on stderr) when no binary exists and none is required.
    pub fn start_or_skip(test: &str, buckets: &[&str]) -> Result<Option<Self>> {
        match binary()? {
            Some(bin) => Self::start(&bin, buckets).map(Some),
            None if std::env::var("FERRY_GUEST_TESTS").as_deref() == Ok("1") => {
                bail!("{test}: s3s-fs is missing and ./lab test needs it: {INSTALL}")
            }
            None => {
                eprintln!(
                    "\n*** SKIPPING {test}: no s3s-fs 0.14.1 found (FERRY_S3S_FS, {CACHED}, PATH).\n*** Get it with: {INSTALL}\n"
                );
                Ok(None)
            }
        }
    }

    /// Starts `bin` on a free loopback port.
    pub fn start(bin: &Path, buckets: &[&str]) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("ferry-s3s-").tempdir()?;
        let root = data.path().join("root");
        for b in buckets {
            std::fs::create_dir_all(root.join(b))?;
        }
        let log = data.path().join("s3s-fs.log");
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = Command::new(bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&root)
                .env("RUST_LOG", "s3s_fs=info,s3s=warn")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(data.path().join("s3s-fs.stderr"))?)
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            match wait_listening(&mut child, port) {
                Ok(()) => {
                    return Ok(S3sFs {
                        child,
                        port,
                        data,
                        log,
                    });
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("s3s-fs did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The data directory (one sub-directory per bucket).
    pub fn root(&self) -> PathBuf {
        self.data.path().join("root")
    }

    /// The file s3s-fs stores `key` of `bucket` in.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root().join(bucket).join(key)
    }

    /// Files of unfinished multipart uploads left in the data directory.
    pub fn leftover_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".upload"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The credentials and region a backend needs, as an environment.
    pub fn env(&self) -> impl Fn(&str) -> Option<String> + use<> {
        move |k| match k {
            "AWS_ACCESS_KEY_ID" => Some(ACCESS_KEY.to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some(SECRET_KEY.to_string()),
            _ => None,
        }
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn wait_listening(child: &mut Child, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("s3s-fs exited at start with {status}");
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("s3s-fs did not listen on 127.0.0.1:{port} within 10 s")
}
