//! The spool across a power cut, in a QEMU guest (two boots):
//!
//! 1. `ferry install` sets up ferry-ship.timer; its timer is stopped for
//!    this boot so nothing drains before the cut;
//! 2. bundle B starts spooling and stops half-way through its write (a
//!    pausing failpoint), `sync` puts its partial entry on the disk; then
//!    bundle A is spooled (`ferry spool add`) and the power is cut at once
//!    (qemu quits, no shutdown): what the guest kernel had not written out
//!    is gone, so A survives only if the spool's fsyncs did their job;
//! 3. the same disk boots again; the timer starts ferry-ship.service,
//!    which ships A (byte-identical), removes B's partial entry, and
//!    leaves the spool empty; B, spooled again, ships too.
//!
//! Gated by `FERRY_GUEST_TESTS=1`; run under `flock /tmp/ferry-guest.lock`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferry_tests::trip::install_ferry;
use ferry_tests::{BootOptions, Guest, GuestImage, guest_tests_enabled};

/// The whole test, both boots included.
const BUDGET: Duration = Duration::from_secs(15 * 60);

#[test]
fn a_bundle_spooled_before_a_power_cut_is_shipped_by_the_drain_unit() -> Result<()> {
    if !guest_tests_enabled("spool_power_cut") {
        return Ok(());
    }
    let t = Instant::now();
    let image = GuestImage::ensure()?;
    let mut guest = Guest::boot(&image, BootOptions::named("spool-power-cut"))?;
    guest.wait_ssh(Duration::from_secs(300))?;
    let sha_a = first_boot(&guest).with_context(|| guest.diagnostics())?;
    guest.power_cut()?;
    ensure!(t.elapsed() < BUDGET, "over budget after the first boot");

    guest.power_on()?;
    guest.wait_ssh(Duration::from_secs(300))?;
    second_boot(&guest, &sha_a, t).with_context(|| guest.diagnostics())?;
    eprintln!("spool power cut: {:.1} s", t.elapsed().as_secs_f64());
    guest.finish()
}

fn first_boot(guest: &Guest) -> Result<String> {
    install_ferry(guest)?;
    let installed = guest.ssh_ok("ferry install 2>&1")?;
    ensure!(
        installed.contains("enabled ferry-ship.timer"),
        "ferry install: {installed}"
    );
    guest.ssh_ok("systemctl is-enabled ferry-ship.timer && systemctl stop ferry-ship.timer")?;
    // The sources are on disk before the clock starts.
    let sums = guest.ssh_ok(
        "head -c 3000000 /dev/urandom > /root/a.tar.gz && \
         head -c 20000000 /dev/urandom > /root/b.tar.gz && sync && \
         sha256sum /root/a.tar.gz",
    )?;
    let sha_a = sums
        .split_whitespace()
        .next()
        .context("no sha256sum output")?
        .to_string();
    // B starts and stops half-way; `sync` puts its partial entry on the
    // disk (so the next boot finds a dead writer's leftovers). Then A, whose
    // entry is on the disk only if ferry's own fsyncs put it there: the
    // power goes at once, long before the kernel's writeback would.
    guest.ssh_ok(
        "(FERRY_FAILPOINT=spool.write.chunk:100:pause nohup ferry spool add /root/b.tar.gz \
            < /dev/null > /root/b.log 2>&1 &)",
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = guest.ssh_ok("cat /root/b.log 2>/dev/null || true")?;
        if log.contains("paused") {
            break;
        }
        if Instant::now() > deadline {
            bail!("B never reached its failpoint: {log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    guest.ssh_ok("sync")?;
    guest.ssh_ok("ferry spool add /root/a.tar.gz")?;
    let spool = guest.ssh_ok("ls /var/spool/ferry/entries /var/spool/ferry/tmp")?;
    eprintln!("spool at the power cut:\n{spool}");
    Ok(sha_a)
}

fn second_boot(guest: &Guest, sha_a: &str, t: Instant) -> Result<()> {
    // The timer fires 30-60 s after boot; the drain takes seconds.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let out = guest.ssh(
            "test -f /var/lib/ferry/bundles/a.tar.gz && \
             systemctl show -p ActiveState --value ferry-ship.service",
        )?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "inactive" {
            break;
        }
        if Instant::now() > deadline || t.elapsed() > BUDGET {
            let journal =
                guest.ssh("journalctl -b -u ferry-ship.service --no-pager | tail -n 30")?;
            bail!(
                "the drain unit did not ship A: {}",
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let journal = guest.ssh_ok("journalctl -b -u ferry-ship.service --no-pager")?;
    ensure!(
        journal.contains("shipped a.tar.gz to dir"),
        "the unit's journal: {journal}"
    );
    ensure!(
        journal.contains("removed an unfinished entry of a writer that died"),
        "B's partial entry was not cleaned: {journal}"
    );
    let sum = guest.ssh_ok("sha256sum /var/lib/ferry/bundles/a.tar.gz")?;
    ensure!(
        sum.starts_with(sha_a),
        "A arrived damaged: {sum} vs {sha_a}"
    );
    let bundles = guest.ssh_ok("ls -A /var/lib/ferry/bundles")?;
    ensure!(
        bundles.split_whitespace().collect::<Vec<_>>() == ["a.tar.gz"],
        "the destination holds {bundles}"
    );
    let left = guest.ssh_ok(
        "ls -A /var/spool/ferry/entries /var/spool/ferry/tmp /var/spool/ferry/trash /var/spool/ferry/quarantine",
    )?;
    ensure!(
        left.lines()
            .all(|l| l.ends_with(':') || l.trim().is_empty()),
        "the spool is not empty: {left}"
    );
    // B's source survived (it was synced): spooled again, it ships.
    guest.ssh_ok("ferry spool add /root/b.tar.gz && ferry ship")?;
    let sums = guest
        .ssh_ok("cd /var/lib/ferry/bundles && sha256sum b.tar.gz && sha256sum /root/b.tar.gz")?;
    let v: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    ensure!(v.len() == 2 && v[0] == v[1], "B: {sums}");
    Ok(())
}
