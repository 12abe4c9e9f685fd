//! Pieces the trip test and the demo share: the session the trip carries,
//! where the ferry binary comes from, and reading a bundle back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::Guest;
use crate::util::shell_quote;

/// The ferry binary to copy into the guest: `FERRY_BIN`, or the
/// workspace's release build.
pub fn ferry_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("FERRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/ferry");
    ensure!(
        release.is_file(),
        "no ferry binary at {}: run `cargo build --release -p ferry` first or set FERRY_BIN",
        release.display()
    );
    Ok(release)
}

/// Copy ferry to /usr/local/bin in the guest (a disk path: the binary of
/// a checkpointed process must still be there after the reboot).
pub fn install_ferry(guest: &Guest) -> Result<()> {
    guest.copy_to(&ferry_bin()?, "/usr/local/bin/ferry")?;
    guest.ssh_ok("chmod 755 /usr/local/bin/ferry && ferry --version")?;
    Ok(())
}

/// The carried session: it prints `tick <time> <kernel>` every second,
/// echoes each line it is sent as `echo:<line>`, and runs `ferry upgrade`
/// in the foreground, then prints `FERRY-EXIT=<code> <kernel>`.
pub fn session_script(ferry_env: &str, ferry_args: &str) -> String {
    session_script_with("", &format!("{ferry_env} ferry upgrade {ferry_args}"))
}

/// [`session_script`] with shell `setup` run first (open files, start
/// helpers) and `command` (say `sudo ferry rehearse`) in place of the
/// upgrade; `FERRY-EXIT=<code> <kernel>` follows it.
///
/// The echo loop blocks in `read` with no timeout: bash's `read -t` drops
/// the bytes it has read when its timer expires in the middle of a line
/// (an echo test once saw `echo:fter-failed-dump`). A failed read (EOF or
/// EIO while the terminal is being carried) waits a second and reads again.
pub fn session_script_with(setup: &str, command: &str) -> String {
    let script = format!(
        "exec 3<&0\n\
         {setup}\n\
         (while :; do echo \"tick $(date +%T) $(uname -r)\"; sleep 1; done) &\n\
         (while :; do if read -r -u 3 l; then echo \"echo:$l\"; else sleep 1; fi; done) &\n\
         {command}; echo \"FERRY-EXIT=$? $(uname -r)\"\n\
         wait\n"
    );
    format!("bash -c {}", shell_quote(&script))
}

/// Fetch a bundle from the guest, check it against its manifest, and
/// unpack it with GNU tar into a directory of the guest's work dir.
pub fn fetch_bundle(guest: &Guest, remote: &str) -> Result<(PathBuf, PathBuf)> {
    let name = Path::new(remote)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .context("bundle path has no file name")?;
    let dir = guest.work_dir().join(format!("bundle-{name}"));
    std::fs::create_dir_all(&dir)?;
    let local = guest.work_dir().join(&name);
    guest.copy_from(remote, &local)?;
    let report = ferry_uploaders::BundleReader::open(&local)?.verify()?;
    ensure!(
        report.is_ok(),
        "bundle does not match its manifest: {}",
        report.summary()
    );
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&local)
        .arg("-C")
        .arg(&dir)
        .output()?;
    ensure!(
        out.status.success(),
        "GNU tar cannot read the bundle: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((local, dir))
}

/// The newest bundle in the guest's bundle directory whose name contains `needle`.
pub fn find_bundle(guest: &Guest, needle: &str) -> Result<String> {
    let listing = guest.ssh_ok("ls -t /var/lib/ferry/bundles/")?;
    let name = listing
        .lines()
        .find(|l| l.contains(needle))
        .with_context(|| format!("no bundle matching {needle} among: {listing}"))?;
    Ok(format!("/var/lib/ferry/bundles/{}", name.trim()))
}
