//! The cached guest image built by `tests/guest/build-image.sh`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::wait_timeout;

/// How long `build-image.sh` may take (a cold build is 1–2 min; slow mirrors happen).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A built guest image: the files `build-image.sh` left in its cache dir.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The cache dir, `${FERRY_CACHE:-/var/cache/ferry-ci}/guest/<key>`.
    pub dir: PathBuf,
    /// The cache key (sha256 prefix of script + kernel ABIs + package list).
    pub key: String,
    /// The kernel ABI the image boots, e.g. `6.1.0-56-cloud-amd64`.
    pub old_kernel: String,
    /// The kernel ABI the local repo upgrades to, e.g. `6.1.0-57-cloud-amd64`.
    pub new_kernel: String,
    /// Raw ext4 root filesystem (never written to: each boot uses an overlay).
    pub base_raw: PathBuf,
    /// Raw ext4 image labelled `ferryrepo`: the guest's flat apt repo.
    pub repo_img: PathBuf,
    /// `vmlinuz-OLD`, for `-kernel`.
    pub vmlinuz: PathBuf,
    /// `initrd.img-OLD`, for `-initrd`.
    pub initrd: PathBuf,
    /// Private key accepted for root in the guest.
    pub ssh_key: PathBuf,
    /// How long `ensure()` took in this process (build or cache hit).
    pub ensure_time: Duration,
}

static ENSURED: Mutex<Option<GuestImage>> = Mutex::new(None);

/// `complete` markers of the images this process uses, each held with a shared
/// `flock` for the life of the process: `build-image.sh` does not delete an
/// old image another test process still boots from.
static IN_USE: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());

fn hold_shared_lock(marker: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(marker).with_context(|| format!("opening {}", marker.display()))?;
    // SAFETY: flock on a valid, owned descriptor; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("flock(LOCK_SH) on {}", marker.display()));
    }
    IN_USE.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    Ok(())
}

impl GuestImage {
    /// Path of the build script.
    pub fn build_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/build-image.sh")
    }

    /// Builds the image if it is not cached yet (runs `build-image.sh`, whose
    /// progress goes to stderr) and returns it. Memoized per process.
    pub fn ensure() -> Result<GuestImage> {
        let mut slot = ENSURED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(img) = slot.as_ref() {
            return Ok(img.clone());
        }
        let started = Instant::now();
        let script = Self::build_script();
        let mut child = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("running {}", script.display()))?;
        let reader = child.stdout.take().map(|mut s| {
            thread::spawn(move || {
                let mut v = String::new();
                let _ = s.read_to_string(&mut v);
                v
            })
        });
        let status = wait_timeout(&mut child, BUILD_TIMEOUT)?
            .with_context(|| format!("{} timed out after {BUILD_TIMEOUT:?}", script.display()))?;
        let stdout = reader
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if !status.success() {
            bail!(
                "{} failed ({status}); its log is on stderr above",
                script.display()
            );
        }
        let dir = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| PathBuf::from(l.trim()))
            .with_context(|| format!("{} printed no cache dir", script.display()))?;
        let mut img = Self::from_dir(&dir)?;
        img.ensure_time = started.elapsed();
        *slot = Some(img.clone());
        Ok(img)
    }

    /// Reads an already built image from its cache dir (`info.env`) and
    /// marks it in use by this process (a shared lock on `complete`).
    pub fn from_dir(dir: &Path) -> Result<GuestImage> {
        let marker = dir.join("complete");
        if !marker.is_file() {
            bail!("{} is not a complete guest image", dir.display());
        }
        hold_shared_lock(&marker)?;
        let info_path = dir.join("info.env");
        let text = std::fs::read_to_string(&info_path)
            .with_context(|| format!("reading {}", info_path.display()))?;
        let env = parse_env(&text);
        let get = |k: &str| -> Result<String> {
            env.get(k)
                .filter(|v| !v.is_empty())
                .cloned()
                .with_context(|| format!("{} has no {k}", info_path.display()))
        };
        // Paths are taken relative to `dir` so a moved cache still works.
        let file = |k: &str| -> Result<PathBuf> {
            let p = PathBuf::from(get(k)?);
            let name = p
                .file_name()
                .with_context(|| format!("{k} in {} is not a file path", info_path.display()))?;
            let p = dir.join(name);
            if !p.is_file() {
                bail!("{k}: {} is missing", p.display());
            }
            Ok(p)
        };
        Ok(GuestImage {
            dir: dir.to_path_buf(),
            key: get("KEY")?,
            old_kernel: get("OLD_KERNEL")?,
            new_kernel: get("NEW_KERNEL")?,
            base_raw: file("BASE_RAW")?,
            repo_img: file("REPO_IMG")?,
            vmlinuz: file("VMLINUZ")?,
            initrd: file("INITRD")?,
            ssh_key: file("SSH_KEY")?,
            ensure_time: Duration::ZERO,
        })
    }
}

/// Parses `KEY=value` lines (no quoting; `#` comments and blank lines skipped).
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_parsing() {
        let env = parse_env("# c\nOLD_KERNEL=6.1.0-56-cloud-amd64\n\nX = y=z \nbad line\n");
        assert_eq!(env["OLD_KERNEL"], "6.1.0-56-cloud-amd64");
        assert_eq!(env["X"], "y=z");
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn from_dir_requires_complete() {
        let d = std::env::temp_dir().join(format!("ferry-img-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(GuestImage::from_dir(&d).is_err());
        for f in [
            "base.raw",
            "repo.img",
            "vmlinuz-A",
            "initrd.img-A",
            "id_ed25519",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::write(d.join("complete"), b"").unwrap();
        std::fs::write(
            d.join("info.env"),
            "KEY=k\nOLD_KERNEL=A\nNEW_KERNEL=B\nBASE_RAW=/elsewhere/base.raw\n\
             REPO_IMG=/x/repo.img\nVMLINUZ=/x/vmlinuz-A\nINITRD=/x/initrd.img-A\nSSH_KEY=/x/id_ed25519\n",
        )
        .unwrap();
        let img = GuestImage::from_dir(&d).unwrap();
        assert_eq!(img.base_raw, d.join("base.raw"));
        assert_eq!(img.new_kernel, "B");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
