//! The session's known enemies (issue 7), each provoked for real in one
//! QEMU guest, two boots:
//!
//! On the old kernel:
//! 1. `sudo ferry rehearse` in a clean session: the trip would work; the
//!    session was dumped with `--leave-running` and goes on; the upgrade
//!    preview names `/usr/bin/sudo`; nothing was left behind.
//! 2. A kernel with the split vDSO (6.13) about to be booted with criu
//!    3.17.1: refused in preflight with the remedy, nothing touched.
//! 3. A D-Bus connection in the session: `ferry upgrade` refuses before
//!    anything, naming the process, the socket and the bus; `ferry
//!    rehearse` shows criu's own failing dump, and the session survives it.
//! 4. A restore that fails with no attempt left (a file the session holds
//!    is gone, moved away right before an in-place restore): ferry gives
//!    up, removes the lock rules, and the client is reset.
//!
//! The trip, old kernel → new kernel: the upgrade installs the newer kernel
//! and a newer sudo while `sudo ferry upgrade` runs it (lost exec bit,
//! replaced libraries); the session holds a FIFO on /run, a file on
//! /dev/shm and a journald stream; on the new boot, before the restore, a
//! unit takes the session's pty indexes and pids and moves a file the
//! session holds away, so the first restore fails; the file is put back and
//! `ferry resume --retry` brings the same connection back.
//!
//! Gated by `FERRY_GUEST_TESTS=1`; the ferry binary comes from `FERRY_BIN`
//! or the workspace's target/release.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferry_tests::trip::{fetch_bundle, find_bundle, install_ferry, session_script_with};
use ferry_tests::{BootOptions, Guest, GuestImage, Session, guest_tests_enabled};
use serde_json::Value;

#[test]
fn enemies() -> Result<()> {
    if !guest_tests_enabled("enemies") {
        return Ok(());
    }
    let image = GuestImage::ensure()?;
    let guest = Guest::boot(&image, BootOptions::named("enemies"))?;
    guest.wait_ssh(Duration::from_secs(300))?;
    install_ferry(&guest)?;
    case(&guest, "rehearsal", Duration::from_secs(300), rehearsal)?;
    case(
        &guest,
        "split vDSO kernel",
        Duration::from_secs(120),
        split_vdso_kernel,
    )?;
    case(
        &guest,
        "D-Bus connection",
        Duration::from_secs(300),
        dbus_connection,
    )?;
    case(&guest, "give up", Duration::from_secs(300), give_up)?;
    case(&guest, "the trip", Duration::from_secs(1500), trip)?;
    guest.finish()?;
    Ok(())
}

/// Run one case with a deadline: past it, qemu is killed (its pid only),
/// so every wait of the case fails at once and the case reports where.
/// `FERRY_ENEMIES_CASES=rehearsal,the trip` runs only those (when working
/// on one); CI runs them all.
fn case(guest: &Guest, name: &str, budget: Duration, f: fn(&Guest) -> Result<()>) -> Result<()> {
    if let Ok(only) = std::env::var("FERRY_ENEMIES_CASES")
        && !only.split(',').any(|c| c.trim() == name)
    {
        eprintln!("[enemies] case {name:?} skipped (FERRY_ENEMIES_CASES)");
        return Ok(());
    }
    let t = Instant::now();
    let (done, wait) = mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        s.spawn(move || {
            if wait.recv_timeout(budget).is_err() {
                eprintln!("[enemies] case {name:?} ran past {budget:?}: stopping qemu");
                guest.kill();
            }
        });
        let r = f(guest);
        let _ = done.send(());
        r
    });
    eprintln!(
        "[enemies] case {name:?}: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    result.with_context(|| format!("case {name:?}\n{}", guest.diagnostics()))
}

/// Wait for `FERRY-EXIT=` and return its line.
fn ferry_exit(session: &Session, timeout: Duration) -> Result<String> {
    Ok(session
        .wait_for("FERRY-EXIT=", timeout)
        .with_context(|| session.transcript())?
        .text)
}

/// The session still ticks and echoes what it is sent.
fn still_alive(session: &Session, tag: &str) -> Result<()> {
    session.send_line(tag)?;
    session
        .wait_for(&format!("echo:{tag}"), Duration::from_secs(30))
        .with_context(|| session.transcript())?;
    Ok(())
}

/// Nothing of a trip is left: no CRIU lock rule, no kernel loaded, no
/// resume unit enabled.
fn nothing_left(guest: &Guest) -> Result<()> {
    let locks = guest.ssh_ok("iptables-save | grep -c 0xc114 || true")?;
    ensure!(locks.trim() == "0", "CRIU lock rules left behind: {locks}");
    let loaded = guest.ssh_ok("cat /sys/kernel/kexec_loaded")?;
    ensure!(loaded.trim() == "0", "a kernel is still loaded for kexec");
    let enabled = guest.ssh("systemctl is-enabled ferry-resume.service")?;
    ensure!(
        !enabled.status.success(),
        "the resume unit is enabled for the next boot"
    );
    Ok(())
}

/// The state of the newest run (or rehearsal) in the guest.
fn newest_state(guest: &Guest, dir: &str) -> Result<Value> {
    let text = guest.ssh_ok(&format!(
        "cat \"{dir}/$(ls -t {dir} | head -n 1)/state.json\""
    ))?;
    serde_json::from_str(&text).context("state.json")
}

fn notes_of_kind<'a>(state: &'a Value, kind: &str) -> Vec<&'a Value> {
    state["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["kind"] == kind)
        .collect()
}

// ---------------------------------------------------------------------------
// Old kernel
// ---------------------------------------------------------------------------

fn rehearsal(guest: &Guest) -> Result<()> {
    let sudo_before = guest.ssh_ok("dpkg-query -W -f '${Version}' sudo")?;
    let session = Session::start(guest, &session_script_with("", "sudo ferry rehearse"))?;
    session.wait_for("tick", Duration::from_secs(60))?;
    let exit = ferry_exit(&session, Duration::from_secs(240))?;
    let transcript = session.transcript();
    ensure!(
        exit.contains(&format!("FERRY-EXIT=0 {}", guest.old_kernel())),
        "the rehearsal of a clean session should pass: {exit}\n{transcript}"
    );
    for needle in [
        "the trip would work",
        "ok   dump",
        "ok   kernel",
        "ok   upgrade-preview",
        // The preview: the upgrade replaces the sudo the session runs.
        "the upgrade replaces /usr/bin/sudo (package sudo",
        "handled (pty)",
        "handled (pid-namespace)",
    ] {
        ensure!(
            transcript.contains(needle),
            "no {needle:?} in:\n{transcript}"
        );
    }
    // The dump left the session running: same connection, still echoing.
    still_alive(&session, "after-rehearsal")?;
    nothing_left(guest)?;
    let state = newest_state(guest, "/var/lib/ferry/rehearsals")?;
    ensure!(
        state["outcome"]["result"] == "would_work",
        "{}",
        state["outcome"]
    );
    let dir = guest.ssh_ok("ls -td /var/lib/ferry/rehearsals/* | head -n 1")?;
    let dir = dir.trim();
    let log = guest.ssh_ok(&format!("cat {dir}/logs/dump.log"))?;
    ensure!(
        log.contains("Dumping finished successfully") && log.contains("Unfreezing tasks into 1"),
        "dump.log lacks a good dump left running"
    );
    ensure!(
        guest
            .ssh(&format!("test -e {dir}/scratch-images"))?
            .status
            .code()
            == Some(1),
        "the rehearsal's images were not removed"
    );
    // Nothing was installed.
    let sudo_after = guest.ssh_ok("dpkg-query -W -f '${Version}' sudo")?;
    ensure!(sudo_before == sudo_after, "the rehearsal upgraded sudo");
    Ok(())
}

/// A copy of the running kernel whose header says 6.13: what kexec would
/// boot is read from the header, so this is a 6.13 kernel to ferry.
fn split_vdso_kernel(guest: &Guest) -> Result<()> {
    let old = guest.old_kernel();
    let patch = format!(
        "python3 - <<'EOF'\n\
         old = b'{old}'\n\
         new = b'6.13-56-cloud-amd64'.ljust(len(old), b' ')\n\
         data = bytearray(open('/boot/vmlinuz-{old}', 'rb').read())\n\
         i = data.find(old, 0x200, 0x8000)\n\
         assert i > 0, 'no version string in the setup header'\n\
         data[i:i + len(old)] = new\n\
         open('/root/vmlinuz-split-vdso', 'wb').write(data)\n\
         EOF"
    );
    guest.ssh_ok(&patch)?;
    let runs_before = guest.ssh_ok("ls /var/lib/ferry/runs 2>/dev/null | wc -l")?;
    let session = Session::start(
        guest,
        &session_script_with(
            "",
            &format!(
                "sudo ferry upgrade --no-upgrade --kernel /root/vmlinuz-split-vdso --initrd /boot/initrd.img-{old}"
            ),
        ),
    )?;
    let exit = ferry_exit(&session, Duration::from_secs(60))?;
    let transcript = session.transcript();
    ensure!(
        exit.contains("FERRY-EXIT=2"),
        "preflight should refuse (exit 2): {exit}\n{transcript}"
    );
    for needle in [
        "preflight failed, nothing was touched",
        "criu 3.17.1 cannot restore on kernel 6.13 or newer",
        "vdso-rt-bounds",
        "Install criu 4.1 or newer",
    ] {
        ensure!(
            transcript.contains(needle),
            "no {needle:?} in:\n{transcript}"
        );
    }
    let runs_after = guest.ssh_ok("ls /var/lib/ferry/runs 2>/dev/null | wc -l")?;
    ensure!(
        runs_before == runs_after,
        "a refused preflight created a run"
    );
    still_alive(&session, "after-vdso-refusal")?;
    nothing_left(guest)
}

fn dbus_connection(guest: &Guest) -> Result<()> {
    let setup = "dbus-monitor --system >/dev/null 2>&1 &\nsleep 1";
    let session = Session::start(
        guest,
        &session_script_with(setup, "sudo ferry upgrade --no-upgrade --allow-same-kernel"),
    )?;
    let exit = ferry_exit(&session, Duration::from_secs(120))?;
    let transcript = session.transcript();
    ensure!(
        exit.contains(&format!("FERRY-EXIT=1 {}", guest.old_kernel())),
        "ferry should refuse on the old kernel: {exit}\n{transcript}"
    );
    for needle in [
        "refused (dbus-connection)",
        "(dbus-monitor) fd",
        "/run/dbus/system_bus_socket",
        "(dbus-daemon)",
        "a D-Bus connection cannot be resumed",
        "trip called off in assess",
    ] {
        ensure!(
            transcript.contains(needle),
            "no {needle:?} in:\n{transcript}"
        );
    }
    still_alive(&session, "after-dbus-refusal")?;
    let state = newest_state(guest, "/var/lib/ferry/runs")?;
    let phases: Vec<&str> = state["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(
        !phases.contains(&"upgrade") && !phases.contains(&"dump"),
        "nothing may run after the refusal: {phases:?}"
    );
    nothing_left(guest)?;
    drop(session);

    // The rehearsal of the same session shows criu's own verdict: a dump
    // that fails, and a session that goes on.
    let session = Session::start(
        guest,
        &session_script_with(setup, "sudo ferry rehearse --no-upgrade"),
    )?;
    let exit = ferry_exit(&session, Duration::from_secs(180))?;
    let transcript = session.transcript();
    ensure!(
        exit.contains("FERRY-EXIT=1"),
        "the rehearsal should fail: {exit}\n{transcript}"
    );
    for needle in [
        "the trip would fail",
        "refused (dbus-connection)",
        "FAIL dump: criu dump failed; the session was left running",
        "Can't dump half of stream unix connection",
        "ext-unix-stream",
    ] {
        ensure!(
            transcript.contains(needle),
            "no {needle:?} in:\n{transcript}"
        );
    }
    still_alive(&session, "after-failed-dump")?;
    nothing_left(guest)
}

/// The session holds /var/tmp/ferry-victim; right after the dump the trip
/// is called off (test switch) and, right before the in-place restore, the
/// file is moved away (test switch: nothing outside can hit that moment).
/// With one attempt allowed, ferry gives up: the lock rules go and the
/// client's connection is reset.
fn give_up(guest: &Guest) -> Result<()> {
    guest.ssh_ok("echo victim > /var/tmp/ferry-victim")?;
    let setup = "exec 9</var/tmp/ferry-victim";
    let env = "FERRY_TESTING_FAIL_AFTER_DUMP=1 FERRY_CRIU_RESTORE_ATTEMPTS=1 \
               FERRY_TESTING_BEFORE_RESTORE='mv /var/tmp/ferry-victim /var/tmp/ferry-victim.moved'";
    let session = Session::start(
        guest,
        &session_script_with(
            setup,
            &format!("sudo env {env} ferry upgrade --no-upgrade --allow-same-kernel"),
        ),
    )?;
    session.wait_for("tick", Duration::from_secs(60))?;
    session
        .wait_for("checkpointing the session", Duration::from_secs(120))
        .with_context(|| session.transcript())?;
    // The run ends `failed` once ferry gave up.
    let deadline = Instant::now() + Duration::from_secs(180);
    let state = loop {
        let s = newest_state(guest, "/var/lib/ferry/runs")?;
        if s["outcome"].is_object() {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "the run did not end: {}",
            s["handoff"]
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    ensure!(
        state["outcome"]["result"] == "failed",
        "{}",
        state["outcome"]
    );
    let reason = state["outcome"]["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("restore attempt 1 of 1") && reason.contains("gave up"),
        "{reason}"
    );
    ensure!(
        reason.contains("ferry-victim"),
        "the reason names the file: {reason}"
    );
    ensure!(
        !session.transcript().contains("FERRY-EXIT="),
        "the foreground never came back"
    );
    // The rules are gone: the client's next packet meets no socket and its
    // connection is reset.
    let locks = guest.ssh_ok("iptables-save | grep -c 0xc114 || true")?;
    ensure!(
        locks.trim() == "0",
        "lock rules left after giving up: {locks}"
    );
    let _ = session.send_line("after-give-up");
    let deadline = Instant::now() + Duration::from_secs(120);
    while session.is_alive() {
        ensure!(Instant::now() < deadline, "the ssh client was not reset");
        let _ = session.send_line("knock");
        std::thread::sleep(Duration::from_secs(2));
    }
    ensure!(!session.transcript().contains("echo:after-give-up"));
    // The evidence: the bundle names the missing file.
    let (_, dir) = fetch_bundle(guest, &find_bundle(guest, "-restore-failed.tar.gz")?)?;
    let diagnosis: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("diagnosis.json"))?)?;
    ensure!(
        diagnosis["root_cause"]["kind"] == "file-missing",
        "diagnosis: {}",
        diagnosis["root_cause"]
    );
    // A retry after giving up is refused.
    let retry = guest.ssh("ferry resume --retry")?;
    ensure!(!retry.status.success(), "a retry after giving up must fail");
    guest.ssh_ok("rm -f /var/tmp/ferry-victim.moved")?;
    nothing_left(guest)
}

// ---------------------------------------------------------------------------
// The trip
// ---------------------------------------------------------------------------

/// Runs on the new boot before `ferry-resume.service`: takes pty indexes
/// (as logins would), takes the session's old pids, moves a file the
/// session holds away. Writes what it did to /run/ferry-test/.
const PROVOKER: &str = r#"import os, time
os.makedirs('/run/ferry-test', exist_ok=True)
ptys = [os.openpty() for _ in range(3)]
open('/run/ferry-test/ptys', 'w').write(' '.join(os.ttyname(s) for _, s in ptys))
held = []
for p in [int(x) for x in open('/etc/ferry-test/pids').read().split()]:
    for _ in range(50):
        if os.path.exists('/proc/%d' % p):
            break
        open('/proc/sys/kernel/ns_last_pid', 'w').write(str(p - 1))
        child = os.fork()
        if child == 0:
            time.sleep(7200)
            os._exit(0)
        if child == p:
            held.append(p)
            break
        os.kill(child, 9)
        os.waitpid(child, 0)
open('/run/ferry-test/pids', 'w').write(' '.join(map(str, held)))
os.rename('/var/tmp/ferry-victim', '/var/tmp/ferry-victim.moved')
if os.fork() == 0:
    time.sleep(7200)
"#;

const PROVOKER_UNIT: &str = "[Unit]
Description=ferry test: take ptys and pids, move a file away, before the restore
Before=ferry-resume.service
After=local-fs.target
ConditionPathExists=/var/tmp/ferry-victim

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 /etc/ferry-test/provoke.py

[Install]
WantedBy=multi-user.target
";

const SETUP: &str = "# ferry-enemies-session
mkdir -p /run/ferry-enemies
mkfifo /run/ferry-enemies/fifo
exec 7<>/run/ferry-enemies/fifo
printf 'kept across the reboot\\n' > /dev/shm/ferry-enemies
exec 8</dev/shm/ferry-enemies
exec 9</var/tmp/ferry-victim
systemd-cat -t ferry-enemies bash -c 'while :; do echo \"journal $(uname -r)\"; sleep 2; done' &
(while read -r l <&7; do echo \"fifo:$l\"; done) &";

fn trip(guest: &Guest) -> Result<()> {
    let new = guest.new_kernel().to_string();
    guest.ssh_ok("mkdir -p /etc/ferry-test && echo victim > /var/tmp/ferry-victim")?;
    guest.ssh_input(
        "cat > /etc/ferry-test/provoke.py",
        Some(PROVOKER.as_bytes().to_vec()),
        Duration::from_secs(30),
    )?;
    guest.ssh_input(
        "cat > /etc/systemd/system/ferry-test-provoke.service && systemctl daemon-reload && systemctl enable ferry-test-provoke.service",
        Some(PROVOKER_UNIT.as_bytes().to_vec()),
        Duration::from_secs(30),
    )?;
    let session = Session::start(guest, &session_script_with(SETUP, "sudo ferry upgrade"))?;
    session.wait_for("tick", Duration::from_secs(60))?;
    // The session's pids, for the provoker to take on the new boot.
    let pids = guest.ssh_ok(
        "{ pgrep -f '^sshd: root@pts/0'; ps -e -o pid=,tty= | awk '$2 ~ /^pts\\// {print $1}'; } | sort -un | tr '\\n' ' '",
    )?;
    ensure!(!pids.trim().is_empty(), "no session pids found");
    guest.ssh_ok(&format!("echo {pids} > /etc/ferry-test/pids"))?;

    // Old boot: the upgrade, then the dump.
    session
        .wait_for("checkpointing the session", Duration::from_secs(900))
        .with_context(|| session.transcript())?;
    let before_reboot = session.transcript();
    ensure!(
        before_reboot
            .contains("warning (upgrade-replaces-open-file): the upgrade replaces /usr/bin/sudo"),
        "the upgrade's open files were not listed:\n{before_reboot}"
    );

    // New boot: the first attempt fails (the file is gone).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(out) = guest.ssh_timeout("uname -r", Duration::from_secs(20))
            && String::from_utf8_lossy(&out.stdout).trim() == new
        {
            break;
        }
        ensure!(Instant::now() < deadline, "no ssh into the new kernel");
        std::thread::sleep(Duration::from_secs(3));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let state = loop {
        let s = newest_state(guest, "/var/lib/ferry/runs")?;
        let failed = s["handoff"]["restore_attempts"]
            .as_array()
            .and_then(|a| a.first())
            .is_some_and(|a| a["error"].is_string());
        if failed {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "the first restore attempt did not fail: {}",
            s["handoff"]
        );
        std::thread::sleep(Duration::from_secs(3));
    };
    // The attempt's evidence is shipped right after it failed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let attempt_bundle = loop {
        match find_bundle(guest, "-restore-attempt-1-failed.tar.gz") {
            Ok(b) => break b,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    let (_, attempt_dir) = fetch_bundle(guest, &attempt_bundle)?;
    let restore_log =
        std::fs::read_to_string(attempt_dir.join("logs/restore.log")).unwrap_or_default();
    let restore_errors: Vec<&str> = restore_log
        .lines()
        .filter(|l| l.contains("Error ("))
        .collect();
    let first = &state["handoff"]["restore_attempts"][0];
    ensure!(
        first["error"]
            .as_str()
            .unwrap_or_default()
            .contains("ferry-victim"),
        "attempt 1 should fail on the moved file: {first}\nrestore.log errors:\n{}",
        restore_errors.join("\n")
    );
    let diagnosis: Value = serde_json::from_str(&std::fs::read_to_string(
        attempt_dir.join("diagnosis.json"),
    )?)?;
    ensure!(
        diagnosis["root_cause"]["kind"] == "file-missing",
        "{}",
        diagnosis["root_cause"]
    );
    ensure!(
        session.is_alive(),
        "the client gave up:\n{}",
        session.transcript()
    );
    ensure!(
        !session
            .lines()
            .iter()
            .any(|l| l.text.starts_with("tick") && l.text.contains(&new)),
        "the session ran before its restore"
    );
    let locks = guest.ssh_ok("iptables-save | grep -c 0xc114 || true")?;
    ensure!(
        locks.trim() != "0",
        "the lock rules must stay after a failed attempt"
    );
    let run_id = state["run_id"].as_str().unwrap_or_default().to_string();
    let timer = guest.ssh_ok(&format!(
        "systemctl is-active ferry-give-up-{run_id}.timer || true"
    ))?;
    ensure!(timer.trim() == "active", "no give-up deadline: {timer}");
    let taken_ptys = guest.ssh_ok("cat /run/ferry-test/ptys")?;
    ensure!(
        taken_ptys.contains("/dev/pts/0"),
        "the provoker took no pts/0: {taken_ptys}"
    );
    let held = guest.ssh_ok("cat /run/ferry-test/pids")?;
    let held: Vec<i32> = held
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    ensure!(
        !held.is_empty(),
        "the provoker took none of the session's pids"
    );

    // Typed while the session is down: must arrive after the restore.
    session.send_line("typed-during-outage")?;
    guest.ssh_ok("mv /var/tmp/ferry-victim.moved /var/tmp/ferry-victim")?;
    let retry = guest.ssh_timeout("ferry resume --retry 2>&1", Duration::from_secs(420))?;
    let retry_out = String::from_utf8_lossy(&retry.stdout).into_owned();
    ensure!(
        retry.status.success(),
        "ferry resume --retry failed:\n{retry_out}"
    );
    ensure!(
        retry_out.contains("restore attempt 2 succeeded"),
        "{retry_out}"
    );

    let exit = ferry_exit(&session, Duration::from_secs(300))?;
    ensure!(
        exit.contains(&format!("FERRY-EXIT=0 {new}")),
        "sudo ferry upgrade should return 0 on {new}: {exit}\n{}",
        session.transcript()
    );
    session
        .wait_for("echo:typed-during-outage", Duration::from_secs(60))
        .with_context(|| session.transcript())?;
    still_alive(&session, "after-retry")?;
    let transcript = session.transcript();
    for needle in [
        "handled (exec-bit): gave back the exec bits: exe of pid",
        "(/usr/bin/sudo): mode 0600 -> 0755",
        "handled (journal-stream)",
        "handled (tmpfs-put-back): re-created FIFO /run/ferry-enemies/fifo",
        "handled (tmpfs-put-back): put back /dev/shm/ferry-enemies",
        "handled (pty): the session's ptys",
        "taken on this boot already: pts/0 by pid",
        "enter it with: nsenter -t",
    ] {
        ensure!(
            transcript.contains(needle),
            "no {needle:?} in:\n{transcript}"
        );
    }

    // The upgrade happened for real.
    ensure!(guest.ssh_ok("uname -r")?.trim() == new);
    let sudo = guest.ssh_ok("dpkg-query -W -f '${Version}' sudo")?;
    ensure!(sudo.ends_with("+ferry1"), "sudo was not upgraded: {sudo}");

    // The FIFO on /run works again, the /dev/shm file has its contents.
    guest.ssh_ok("timeout 20 sh -c 'echo hello-fifo > /run/ferry-enemies/fifo'")?;
    session
        .wait_for("fifo:hello-fifo", Duration::from_secs(30))
        .with_context(|| session.transcript())?;
    let bash = guest.ssh_ok("pgrep -o -f 'ferry-enemies-session'")?;
    let bash = bash.trim();
    let shm = guest.ssh_ok(&format!("cat /proc/{bash}/fd/8"))?;
    ensure!(shm == "kept across the reboot\n", "/dev/shm file: {shm:?}");
    let tty = guest.ssh_ok(&format!("readlink /proc/{bash}/fd/0"))?;
    ensure!(
        tty.trim().starts_with("/dev/pts/"),
        "the session's tty: {tty}"
    );

    // The journald stream carries lines from the new kernel.
    let journal = guest.ssh_ok("journalctl -b 0 -t ferry-enemies --no-pager -o cat")?;
    ensure!(
        journal.contains(&format!("journal {new}")),
        "no journal line from the new kernel:\n{journal}"
    );

    // Pids: the session's old pids are held by the provoker on the host;
    // inside its namespace the session has them still.
    for pid in &held {
        let status = guest.ssh_ok(&format!("grep -E '^(Name|NSpid)' /proc/{pid}/status"))?;
        ensure!(
            status.contains("python3"),
            "pid {pid} is not the provoker's: {status}"
        );
    }
    let nspid = guest.ssh_ok(&format!("grep NSpid /proc/{bash}/status"))?;
    let parts: Vec<&str> = nspid.split_whitespace().collect();
    ensure!(
        parts.len() == 3 && parts[1] != parts[2],
        "the restored bash is not in a new pid namespace: {nspid}"
    );

    // The exec-bit fix held: the restored sudo (running its replaced, once
    // 0600 copy) relayed `ferry upgrade`'s exit code, and the kernel never
    // refused it as an executable.

    // Clean up after the trip: no rules, scaling back, units as they
    // should be, no deadline left.
    let locks = guest.ssh_ok("iptables-save | grep -c 0xc114 || true")?;
    ensure!(locks.trim() == "0", "CRIU lock rules left behind: {locks}");
    let wscale = guest.ssh_ok("sysctl -n net.ipv4.tcp_window_scaling")?;
    ensure!(
        wscale.trim() == "1",
        "tcp_window_scaling not put back: {wscale}"
    );
    let enabled = guest.ssh("systemctl is-enabled ferry-resume.service")?;
    ensure!(String::from_utf8_lossy(&enabled.stdout).trim() == "disabled");
    let active = guest.ssh_ok(&format!(
        "systemctl is-active ferry-resume-attempt-2-{run_id}.service || true"
    ))?;
    ensure!(
        active.trim() == "active",
        "the retry's unit holds the session: {active}"
    );
    let timer = guest.ssh_ok(&format!(
        "systemctl is-active ferry-give-up-{run_id}.timer || true"
    ))?;
    ensure!(
        timer.trim() != "active",
        "the give-up deadline is still set"
    );

    // The bundle holds both attempts.
    let (_, dir) = fetch_bundle(guest, &find_bundle(guest, "-succeeded.tar.gz")?)?;
    ensure!(
        std::fs::read_to_string(dir.join("logs/restore-attempt-1.log"))?
            .contains("Restoring FAILED")
    );
    ensure!(
        std::fs::read_to_string(dir.join("logs/restore.log"))?
            .contains("Restore finished successfully")
    );
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
    ensure!(
        !notes_of_kind(&state, "upgrade-replaces-open-file").is_empty(),
        "no upgrade warning in the state"
    );
    if let Some(gap) = session.largest_gap() {
        eprintln!(
            "trip: client downtime {:.1} s (one failed attempt and a retry)",
            gap.duration.as_secs_f64()
        );
    }
    Ok(())
}
