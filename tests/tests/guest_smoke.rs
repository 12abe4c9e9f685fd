//! Smoke test of the QEMU guest harness: the image boots the OLD kernel,
//! CRIU works, the local repo offers the NEW kernel, systemd settles, and a
//! pty session round-trips. Gated by `FERRY_GUEST_TESTS=1`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferry_tests::{BootOptions, Guest, GuestImage, Session, guest_tests_enabled};

#[test]
fn guest_smoke() -> Result<()> {
    if !guest_tests_enabled("guest_smoke") {
        return Ok(());
    }
    let t = Instant::now();
    let image = GuestImage::ensure()?;
    eprintln!(
        "image {} (old {}, new {}) ready in {:.1} s",
        image.dir.display(),
        image.old_kernel,
        image.new_kernel,
        t.elapsed().as_secs_f64()
    );

    let guest = Guest::boot(&image, BootOptions::named("smoke"))?;
    let boot = guest.wait_ssh(Duration::from_secs(300))?;
    eprintln!("boot to ssh: {:.1} s", boot.as_secs_f64());
    check_guest(&guest).with_context(|| guest.diagnostics())?;
    let t = Instant::now();
    guest.finish()?;
    eprintln!("shutdown: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn check_guest(guest: &Guest) -> Result<()> {
    let uname = guest.ssh_ok("uname -r")?;
    ensure!(
        uname.trim() == guest.old_kernel(),
        "guest runs {uname:?}, expected {}",
        guest.old_kernel()
    );

    let state = guest.ssh_timeout(
        "timeout 300 systemctl is-system-running --wait",
        Duration::from_secs(330),
    )?;
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    if state != "running" {
        let failed = guest.ssh_ok("systemctl --failed --no-legend --plain")?;
        eprintln!("system state {state}; failed units:\n{failed}");
    }
    ensure!(
        state == "running" || state == "degraded",
        "systemctl is-system-running: {state:?}"
    );
    let analyze = guest.ssh_ok("systemd-analyze; systemd-analyze blame | head -n 5")?;
    eprintln!(
        "[{:.1} s] system {state}:\n{}",
        guest.uptime().as_secs_f64(),
        analyze.trim_end()
    );

    let criu = guest.ssh_ok("criu check 2>&1")?;
    ensure!(criu.contains("Looks good"), "criu check said: {criu}");
    eprintln!(
        "[{:.1} s] criu check: Looks good",
        guest.uptime().as_secs_f64()
    );

    guest.ssh_ok("findmnt -n /srv/ferry-repo")?;
    guest.ssh_ok("apt-get update 2>&1")?;
    let sim = guest.ssh_ok("apt-get -s dist-upgrade 2>&1")?;
    let want = format!("Inst linux-image-{} ", guest.new_kernel());
    ensure!(
        sim.contains(&want),
        "dist-upgrade would not install linux-image-{}:\n{sim}",
        guest.new_kernel()
    );
    eprintln!(
        "[{:.1} s] apt offers linux-image-{}",
        guest.uptime().as_secs_f64(),
        guest.new_kernel()
    );

    // A pty session: output is timestamped, input reaches the remote side.
    // (No `read -t`: bash drops a half-read line when its timer expires.)
    let session = Session::start(
        guest,
        "(while :; do echo \"tick $(date +%T) $(uname -r)\"; sleep 1; done) & while :; do if read -r l; then echo \"echo:$l\"; else sleep 1; fi; done",
    )?;
    session.wait_for("tick ", Duration::from_secs(60))?;
    session.send_line("hello-ferry")?;
    session.wait_for("echo:hello-ferry", Duration::from_secs(30))?;
    let (_, later) = session.wait_for_match(session.len(), Duration::from_secs(30), |l| {
        l.starts_with("tick ")
    })?;
    ensure!(
        later.text.ends_with(guest.old_kernel()),
        "tick line: {}",
        later.text
    );
    ensure!(session.is_alive(), "session ended early");
    let gap = session
        .largest_gap()
        .context("no gap with at least two lines")?;
    eprintln!(
        "session: {} lines, largest gap {:.2} s",
        session.len(),
        gap.duration.as_secs_f64()
    );
    ensure!(gap.duration < Duration::from_secs(20), "gap {gap:?}");

    // Files go both ways.
    let dir = guest.work_dir();
    let src = dir.join("copy-in.txt");
    std::fs::write(&src, "ferry\n")?;
    guest.copy_to(&src, "/tmp/copy-in.txt")?;
    let back = dir.join("copy-back.txt");
    guest.copy_from("/tmp/copy-in.txt", &back)?;
    ensure!(
        std::fs::read_to_string(&back)? == "ferry\n",
        "copy round trip"
    );

    let usernet = guest.hmp("info usernet")?;
    ensure!(usernet.contains("HOST_FORWARD"), "info usernet: {usernet}");
    eprintln!("[{:.1} s] checks done", guest.uptime().as_secs_f64());
    Ok(())
}
