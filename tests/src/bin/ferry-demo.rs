//! `./lab demo`: one trip in a fresh QEMU guest, told as it happens.
//!
//! A live `ssh -tt` session from this machine prints the guest's kernel
//! every second and runs `sudo ferry upgrade`; the guest upgrades from its
//! local apt repository (a newer kernel), is checkpointed, kexecs and is
//! restored. The demo prints the session as the client sees it, the
//! downtime, and where the bundle and trace landed on this machine.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ferry_tests::trip::{fetch_bundle, find_bundle, install_ferry, session_script};
use ferry_tests::{BootOptions, Guest, GuestImage, Session};

fn main() -> Result<()> {
    eprintln!("demo: preparing the guest image (built once, then cached)…");
    let image = GuestImage::ensure()?;
    eprintln!(
        "demo: booting Debian 12 on {} under QEMU (software emulation; about a minute)…",
        image.old_kernel
    );
    let guest = Guest::boot(&image, BootOptions::named("demo"))?;
    guest.wait_ssh(Duration::from_secs(300))?;
    install_ferry(&guest)?;
    eprintln!("demo: starting a live ssh session that runs `ferry upgrade`; its output follows.\n");
    let session = Session::start(&guest, &session_script("", ""))?;
    let mut shown = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(1200);
    let exit = loop {
        let lines = session.lines();
        for l in &lines[shown..] {
            println!("  | {}", l.text);
        }
        shown = lines.len();
        if let Some(l) = lines.iter().find(|l| l.text.contains("FERRY-EXIT=")) {
            break l.text.clone();
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no result after 20 minutes; work dir {}",
            guest.work_dir().display()
        );
        ensure!(
            session.is_alive(),
            "the ssh client exited:\n{}",
            session.transcript()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    session.send_line("hello after the trip")?;
    session.wait_for("echo:hello after the trip", Duration::from_secs(20))?;
    for l in &session.lines()[shown..] {
        println!("  | {}", l.text);
    }
    ensure!(exit.contains("FERRY-EXIT=0"), "the trip failed: {exit}");

    let gap = session.largest_gap().context("no output gap measured")?;
    let remote = find_bundle(&guest, "-succeeded.tar.gz")?;
    let (bundle, dir) = fetch_bundle(&guest, &remote)?;
    let out = PathBuf::from("demo-out");
    std::fs::create_dir_all(&out)?;
    let kept = out.join(bundle.file_name().context("bundle name")?);
    std::fs::copy(&bundle, &kept)?;
    let trace = out.join("trace.jsonl");
    std::fs::copy(dir.join("trace/otlp.jsonl"), &trace)?;
    let jaeger = out.join("jaeger.json");
    std::fs::copy(dir.join("trace/jaeger.json"), &jaeger)?;
    let report = out.join("report.html");
    std::fs::copy(dir.join("report.html"), &report)?;
    println!();
    println!(
        "demo: the same ssh connection went from {} to {}",
        image.old_kernel, image.new_kernel
    );
    println!(
        "demo: downtime seen by the client (largest output gap): {:.1} s",
        gap.duration.as_secs_f64()
    );
    println!("demo: bundle: {} (in the guest: {remote})", kept.display());
    println!(
        "demo: trace (OTLP/JSON lines, both boots, one trace id): {}",
        trace.display()
    );
    println!(
        "demo: the same trace for Jaeger's UI (Search > JSON File, no backend needed): {}",
        jaeger.display()
    );
    println!(
        "demo: the run's timeline, to open in a browser: {}",
        report.display()
    );
    guest.finish()?;
    Ok(())
}
