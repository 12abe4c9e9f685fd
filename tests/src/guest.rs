//! One QEMU/TCG guest booted from the cached image.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::image::GuestImage;
use crate::util::{free_port, output_with_timeout, shell_quote, tail_lines};

/// The guest's static address (ifupdown, see build-image.sh).
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The host as the guest sees it (slirp gateway).
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Conventional guest-side address for `guestfwd` services (`ferry-telemetry` in /etc/hosts).
pub const TELEMETRY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// Default bound on a single `ssh()` command.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// `guestfwd=tcp:GUEST_ADDR:GUEST_PORT-cmd:ferry-guestfwd 127.0.0.1 HOST_PORT`:
/// every connection the guest makes to `guest_addr:guest_port` becomes a
/// fresh connection to `127.0.0.1:host_port` on the host.
///
/// Not the chardev form (`…-tcp:127.0.0.1:PORT`): QEMU opens that once at
/// start-up (and refuses to start when nobody listens) and funnels every
/// guest connection of the VM's life into that one stream, with no close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFwd {
    pub guest_addr: Ipv4Addr,
    pub guest_port: u16,
    pub host_port: u16,
    /// The per-connection proxy (`src/bin/ferry-guestfwd.rs`).
    pub proxy: PathBuf,
}

impl GuestFwd {
    fn qemu_arg(&self) -> String {
        format!(
            "guestfwd=tcp:{}:{}-cmd:{} 127.0.0.1 {}",
            self.guest_addr,
            self.guest_port,
            self.proxy.display(),
            self.host_port
        )
    }
}

/// Where `ferry-guestfwd` is: `FERRY_GUESTFWD`, else next to the running
/// test or demo binary (cargo builds the package's binaries for its
/// integration tests: `target/<profile>/`, one level above `deps/`).
pub fn guestfwd_proxy() -> PathBuf {
    if let Ok(p) = std::env::var("FERRY_GUESTFWD") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dirs = exe.ancestors().skip(1).take(2);
    dirs.map(|d| d.join("ferry-guestfwd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ferry-guestfwd"))
}

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Short name, used for the work dir (`tests/work/<name>-<pid>-<n>`).
    pub name: String,
    /// Extra `guestfwd` rules on the user netdev.
    pub guestfwd: Vec<GuestFwd>,
    /// Open an HMP monitor on a unix socket in the work dir (see [`Guest::hmp`]).
    pub monitor: bool,
    /// Record the guest's traffic to `net.pcap` in the work dir (`filter-dump`).
    pub pcap: bool,
    pub memory_mib: u32,
    pub smp: u32,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// Appended to qemu's argv.
    pub extra_qemu_args: Vec<String>,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            name: "guest".into(),
            guestfwd: Vec::new(),
            monitor: true,
            pcap: false,
            memory_mib: 2048,
            smp: 2,
            extra_cmdline: String::new(),
            extra_qemu_args: Vec::new(),
        }
    }
}

impl BootOptions {
    pub fn named(name: &str) -> Self {
        BootOptions {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Forwards the guest's connections to `guest_addr:guest_port` to
    /// `127.0.0.1:host_port` (see [`GuestFwd`]).
    pub fn guestfwd(mut self, guest_addr: Ipv4Addr, guest_port: u16, host_port: u16) -> Self {
        self.guestfwd.push(GuestFwd {
            guest_addr,
            guest_port,
            host_port,
            proxy: guestfwd_proxy(),
        });
        self
    }

    pub fn pcap(mut self, on: bool) -> Self {
        self.pcap = on;
        self
    }
}

/// A running guest. Dropping it kills its qemu (that PID only) and keeps the
/// work dir for postmortem; [`Guest::finish`] shuts down cleanly and removes it.
pub struct Guest {
    image: GuestImage,
    name: String,
    work_dir: PathBuf,
    ssh_port: u16,
    ssh_key: PathBuf,
    serial_path: PathBuf,
    qemu_log_path: PathBuf,
    monitor_path: Option<PathBuf>,
    child: Mutex<Child>,
    pid: u32,
    started: Instant,
    finished: AtomicBool,
    sessions: AtomicUsize,
    /// qemu's argv, to power the same machine on again.
    args: Vec<String>,
}

static BOOTS: AtomicUsize = AtomicUsize::new(0);

/// Root of the per-run work dirs: `$FERRY_WORK_DIR` or `tests/work`.
pub fn work_root() -> PathBuf {
    std::env::var_os("FERRY_WORK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("work"))
}

impl Guest {
    /// Boots a guest: fresh qcow2 overlay over `base.raw`, the old kernel via
    /// `-kernel/-initrd`, ssh forwarded from a free 127.0.0.1 port. Returns as
    /// soon as qemu runs; call [`Guest::wait_ssh`] next.
    pub fn boot(image: &GuestImage, opts: BootOptions) -> Result<Guest> {
        for fwd in &opts.guestfwd {
            let p = &fwd.proxy;
            if !p.is_absolute() || !p.is_file() {
                bail!(
                    "the guestfwd proxy {} is missing: build it with `cargo build -p ferry-tests --bin ferry-guestfwd` or set FERRY_GUESTFWD",
                    p.display()
                );
            }
            // QEMU splits -netdev at commas and slirp the command at spaces.
            if p.to_string_lossy().contains([',', ' ']) {
                bail!(
                    "the guestfwd proxy path {} holds a comma or a space, which QEMU cannot pass; set FERRY_GUESTFWD to a plain path",
                    p.display()
                );
            }
        }
        let n = BOOTS.fetch_add(1, Ordering::SeqCst);
        let safe_name: String = opts
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let work_dir = work_root().join(format!("{safe_name}-{}-{n}", std::process::id()));
        if work_dir.exists() {
            fs::remove_dir_all(&work_dir)
                .with_context(|| format!("clearing {}", work_dir.display()))?;
        }
        fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        eprintln!("[guest {safe_name}] work dir {}", work_dir.display());

        // The key must be 0600 and owned by us, or ssh refuses it.
        let ssh_key = work_dir.join("id_ed25519");
        fs::copy(&image.ssh_key, &ssh_key)
            .with_context(|| format!("copying {}", image.ssh_key.display()))?;
        fs::set_permissions(&ssh_key, fs::Permissions::from_mode(0o600))?;

        let overlay = work_dir.join("overlay.qcow2");
        let out = output_with_timeout(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-b"])
                .arg(&image.base_raw)
                .args(["-F", "raw"])
                .arg(&overlay),
            None,
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            bail!(
                "qemu-img create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let serial_path = work_dir.join("serial.log");
        let qemu_log_path = work_dir.join("qemu.log");
        let monitor_path = opts.monitor.then(|| work_dir.join("monitor.sock"));
        if let Some(m) = &monitor_path
            && m.as_os_str().len() >= 100
        {
            bail!(
                "monitor socket path too long for a unix socket: {}",
                m.display()
            );
        }

        // The free port can be taken between our probe and qemu's bind: retry.
        let mut last_err = String::new();
        for attempt in 0..4 {
            let ssh_port = free_port()?;
            let args = qemu_args(
                image,
                &opts,
                &overlay,
                &serial_path,
                monitor_path.as_deref(),
                ssh_port,
                &work_dir,
            );
            fs::write(
                work_dir.join("qemu.cmdline"),
                args.iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
                    + "\n",
            )?;
            let log = fs::File::create(&qemu_log_path)?;
            let mut child = Command::new("qemu-system-x86_64")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("spawning qemu-system-x86_64")?;
            let pid = child.id();
            // A bad option or a taken port ends qemu within a moment.
            let early = wait_timeout_no_kill(&mut child, Duration::from_millis(1500))?;
            match early {
                None => {
                    eprintln!("[guest {safe_name}] qemu pid {pid}, ssh on 127.0.0.1:{ssh_port}");
                    return Ok(Guest {
                        image: image.clone(),
                        name: safe_name,
                        work_dir,
                        ssh_port,
                        ssh_key,
                        serial_path,
                        qemu_log_path,
                        monitor_path,
                        child: Mutex::new(child),
                        pid,
                        started: Instant::now(),
                        finished: AtomicBool::new(false),
                        sessions: AtomicUsize::new(0),
                        args,
                    });
                }
                Some(status) => {
                    last_err = format!(
                        "qemu exited at once ({status}): {}",
                        fs::read_to_string(&qemu_log_path)
                            .unwrap_or_default()
                            .trim()
                    );
                    if !last_err.contains("forwarding") {
                        break;
                    }
                    eprintln!("[guest {safe_name}] attempt {attempt}: {last_err}; retrying");
                }
            }
        }
        bail!("{last_err} (work dir kept: {})", work_dir.display())
    }

    pub fn image(&self) -> &GuestImage {
        &self.image
    }
    pub fn old_kernel(&self) -> &str {
        &self.image.old_kernel
    }
    pub fn new_kernel(&self) -> &str {
        &self.image.new_kernel
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }
    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }
    pub fn ssh_key(&self) -> &Path {
        &self.ssh_key
    }
    /// The qemu process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Time since qemu was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether qemu is still running.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        matches!(child.try_wait(), Ok(None))
    }

    /// qemu's exit status, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().ok().flatten()
    }

    /// Everything the guest wrote on its serial console so far.
    pub fn serial_log(&self) -> String {
        fs::read(&self.serial_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn serial_path(&self) -> &Path {
        &self.serial_path
    }

    /// qemu's own stdout/stderr.
    pub fn qemu_log(&self) -> String {
        fs::read_to_string(&self.qemu_log_path).unwrap_or_default()
    }

    /// `net.pcap` in the work dir (only written with [`BootOptions::pcap`]).
    pub fn pcap_path(&self) -> PathBuf {
        self.work_dir.join("net.pcap")
    }

    /// A short postmortem text: qemu state and the serial console's tail.
    pub fn diagnostics(&self) -> String {
        format!(
            "qemu pid {} {}; work dir {}\n--- qemu.log ---\n{}\n--- serial tail ---\n{}",
            self.pid,
            match self.exit_status() {
                Some(s) => format!("exited ({s})"),
                None => "running".into(),
            },
            self.work_dir.display(),
            tail_lines(&self.qemu_log(), 10),
            tail_lines(&self.serial_log(), 40)
        )
    }

    /// The base ssh command to the guest's root: key, port, no host key
    /// checks, no user config. `tty` selects `-tt` (sessions) or `-T`.
    pub fn ssh_command(&self, tty: bool) -> Command {
        let mut c = Command::new("ssh");
        c.arg(if tty { "-tt" } else { "-T" })
            .args(["-F", "/dev/null"])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=15"])
            .args(["-o", "IdentitiesOnly=yes"])
            .args(["-o", "IdentityAgent=none"])
            .args(["-o", "ControlMaster=no"])
            .arg("-i")
            .arg(&self.ssh_key)
            .args(["-p", &self.ssh_port.to_string()])
            .arg("root@127.0.0.1");
        c
    }

    /// Runs `cmd` (a shell command line) in the guest over a pty-less ssh,
    /// bounded by [`DEFAULT_CMD_TIMEOUT`].
    pub fn ssh(&self, cmd: &str) -> Result<Output> {
        self.ssh_timeout(cmd, DEFAULT_CMD_TIMEOUT)
    }

    /// Like [`Guest::ssh`] with an explicit timeout (ssh is killed after it).
    pub fn ssh_timeout(&self, cmd: &str, timeout: Duration) -> Result<Output> {
        self.ssh_input(cmd, None, timeout)
    }

    /// Like [`Guest::ssh_timeout`], feeding `input` to the command's stdin.
    pub fn ssh_input(
        &self,
        cmd: &str,
        input: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Output> {
        let mut c = self.ssh_command(false);
        c.arg("--").arg(cmd);
        output_with_timeout(&mut c, input, timeout)
            .with_context(|| format!("ssh to guest {}: {cmd}", self.name))
    }

    /// Runs `cmd` and returns its stdout; a non-zero exit is an error
    /// carrying stderr (and stdout's tail).
    pub fn ssh_ok(&self, cmd: &str) -> Result<String> {
        let out = self.ssh(cmd)?;
        check(cmd, out)
    }

    /// [`Guest::ssh_ok`] with an explicit timeout.
    pub fn ssh_ok_timeout(&self, cmd: &str, timeout: Duration) -> Result<String> {
        let out = self.ssh_timeout(cmd, timeout)?;
        check(cmd, out)
    }

    /// Waits until ssh into the guest works; returns the time since qemu
    /// started. Fails early if qemu exits.
    pub fn wait_ssh(&self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if !self.is_running() {
                bail!("qemu exited while waiting for ssh\n{}", self.diagnostics());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no ssh to guest {} after {timeout:?} (last: {})\n{}",
                    self.name,
                    last.trim(),
                    self.diagnostics()
                );
            }
            match self.ssh_timeout("true", left.min(Duration::from_secs(30))) {
                Ok(out) if out.status.success() => {
                    let t = self.started.elapsed();
                    eprintln!(
                        "[guest {}] ssh up {:.1} s after qemu start",
                        self.name,
                        t.as_secs_f64()
                    );
                    return Ok(t);
                }
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    /// Copies a host file into the guest (via `cat` over ssh).
    pub fn copy_to(&self, local: &Path, remote: &str) -> Result<()> {
        let data = fs::read(local).with_context(|| format!("reading {}", local.display()))?;
        let cmd = format!("cat > {}", shell_quote(remote));
        let out = self.ssh_input(&cmd, Some(data), DEFAULT_CMD_TIMEOUT)?;
        check(&cmd, out).map(|_| ())
    }

    /// Copies a guest file to the host (via `cat` over ssh).
    pub fn copy_from(&self, remote: &str, local: &Path) -> Result<()> {
        let cmd = format!("cat {}", shell_quote(remote));
        let out = self.ssh(&cmd)?;
        if !out.status.success() {
            bail!(
                "`{cmd}` in guest failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        fs::write(local, &out.stdout).with_context(|| format!("writing {}", local.display()))
    }

    /// Sends one HMP command over the monitor socket and returns its output.
    pub fn hmp(&self, cmd: &str) -> Result<String> {
        let path = self
            .monitor_path
            .as_ref()
            .context("guest booted without a monitor (BootOptions::monitor)")?;
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        read_until_prompt(&mut reader).context("reading the HMP banner")?;
        writer.write_all(cmd.as_bytes())?;
        writer.write_all(b"\n")?;
        let raw = read_until_prompt(&mut reader).context("reading the HMP reply")?;
        // The first line echoes the command (with terminal escapes); drop it.
        let text = strip_escapes(&raw);
        let mut lines = text.lines();
        lines.next();
        Ok(lines
            .map(|l| l.trim_end_matches('\r'))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Counts ssh sessions started on this guest (for their log file names).
    pub(crate) fn next_session_index(&self) -> usize {
        self.sessions.fetch_add(1, Ordering::SeqCst)
    }

    /// Waits until qemu exits (e.g. after `poweroff`, a panic, or a reboot
    /// with `-no-reboot`). `None` if it still runs after `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        wait_timeout_no_kill(&mut child, timeout)
    }

    /// Kills qemu (this PID only) and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts the power: qemu quits at once (HMP `quit`), the guest gets no
    /// shutdown, and whatever its kernel had not written to the virtual
    /// disk is lost. qemu itself flushes what it was given, so the overlay
    /// is the disk as a power cut leaves it.
    pub fn power_cut(&self) -> Result<()> {
        // The monitor closes as qemu exits: the reply may never come.
        let _ = self.hmp("quit");
        if self.wait_exit(Duration::from_secs(30))?.is_none() {
            bail!("qemu {} did not quit on the power cut", self.pid);
        }
        eprintln!("[guest {}] power cut", self.name);
        Ok(())
    }

    /// Powers the same machine on again after it stopped (same overlay,
    /// same ssh port); call [`Guest::wait_ssh`] next.
    pub fn power_on(&mut self) -> Result<()> {
        ensure!(!self.is_running(), "guest {} is still running", self.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.qemu_log_path)?;
        let child = Command::new("qemu-system-x86_64")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning qemu-system-x86_64 again")?;
        self.pid = child.id();
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = child;
        self.started = Instant::now();
        eprintln!(
            "[guest {}] powered on again, qemu pid {}",
            self.name, self.pid
        );
        Ok(())
    }

    /// Asks the guest to power off; kills qemu if it is still up after `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        // The connection may drop as the guest goes down: ignore ssh's verdict.
        let _ = self.ssh_timeout("systemctl --no-block poweroff", Duration::from_secs(30));
        if self.wait_exit(timeout)?.is_none() {
            eprintln!(
                "[guest {}] no clean poweroff within {timeout:?}; killing qemu {}",
                self.name, self.pid
            );
            self.kill();
        }
        Ok(())
    }

    /// Shuts down and removes the work dir (kept if `FERRY_KEEP_WORK=1`).
    pub fn finish(self) -> Result<()> {
        self.shutdown(Duration::from_secs(120))?;
        self.finished.store(true, Ordering::SeqCst);
        if std::env::var("FERRY_KEEP_WORK").as_deref() == Ok("1") {
            eprintln!(
                "[guest {}] work dir kept: {}",
                self.name,
                self.work_dir.display()
            );
        } else {
            fs::remove_dir_all(&self.work_dir)
                .with_context(|| format!("removing {}", self.work_dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        if !self.finished.load(Ordering::SeqCst) {
            eprintln!(
                "[guest {}] qemu {} stopped; work dir kept for postmortem: {}",
                self.name,
                self.pid,
                self.work_dir.display()
            );
        }
    }
}

fn qemu_args(
    image: &GuestImage,
    opts: &BootOptions,
    overlay: &Path,
    serial: &Path,
    monitor: Option<&Path>,
    ssh_port: u16,
    work_dir: &Path,
) -> Vec<String> {
    let mut cmdline = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1".to_string();
    if !opts.extra_cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&opts.extra_cmdline);
    }
    let mut netdev = format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
    for fwd in &opts.guestfwd {
        netdev.push(',');
        netdev.push_str(&fwd.qemu_arg());
    }
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("ferry-{}", opts.name),
        "-accel".into(),
        "tcg".into(),
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        opts.smp.to_string(),
        "-m".into(),
        opts.memory_mib.to_string(),
        "-no-reboot".into(),
        "-nographic".into(),
        "-serial".into(),
        format!("file:{}", serial.display()),
        "-monitor".into(),
        match monitor {
            Some(m) => format!("unix:{},server=on,wait=off", m.display()),
            None => "none".into(),
        },
        "-kernel".into(),
        image.vmlinuz.display().to_string(),
        "-initrd".into(),
        image.initrd.display().to_string(),
        "-append".into(),
        cmdline,
        "-drive".into(),
        format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            overlay.display()
        ),
        "-drive".into(),
        format!(
            "file={},if=virtio,format=raw,readonly=on",
            image.repo_img.display()
        ),
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
        "-pidfile".into(),
        work_dir.join("qemu.pid").display().to_string(),
    ];
    if opts.pcap {
        a.push("-object".into());
        a.push(format!(
            "filter-dump,id=pcap0,netdev=n0,file={}",
            work_dir.join("net.pcap").display()
        ));
    }
    a.extend(opts.extra_qemu_args.iter().cloned());
    a
}

fn check(cmd: &str, out: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{cmd}` in guest failed ({}):\nstderr: {}\nstdout tail: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail_lines(&stdout, 20)
        );
    }
    Ok(stdout)
}

/// Like [`wait_timeout`] but leaves the child running on timeout.
fn wait_timeout_no_kill(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().context("waiting for qemu")? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn read_until_prompt<R: BufRead>(r: &mut R) -> Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = r.read(&mut byte)?;
        if n == 0 {
            bail!("monitor closed the connection");
        }
        buf.push(byte[0]);
        if buf.ends_with(b"(qemu) ") {
            buf.truncate(buf.len() - b"(qemu) ".len());
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
    }
}

/// Removes ANSI escape sequences (HMP's readline echoes with them).
pub fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters until a final byte in @..~
                for c2 in chars.by_ref() {
                    if ('@'..='~').contains(&c2) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guestfwd_arg() {
        let f = GuestFwd {
            guest_addr: TELEMETRY_IP,
            guest_port: 4318,
            host_port: 40000,
            proxy: "/t/ferry-guestfwd".into(),
        };
        assert_eq!(
            f.qemu_arg(),
            "guestfwd=tcp:10.0.2.100:4318-cmd:/t/ferry-guestfwd 127.0.0.1 40000"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(strip_escapes("a\u{1b}[Kb\u{1b}[1;2Hc\u{1b}Dd"), "abcd");
    }

    #[test]
    fn args_shape() {
        let img = GuestImage {
            dir: "/c".into(),
            key: "k".into(),
            old_kernel: "A".into(),
            new_kernel: "B".into(),
            base_raw: "/c/base.raw".into(),
            repo_img: "/c/repo.img".into(),
            vmlinuz: "/c/vmlinuz-A".into(),
            initrd: "/c/initrd.img-A".into(),
            ssh_key: "/c/id_ed25519".into(),
            ensure_time: Duration::ZERO,
        };
        let mut opts = BootOptions::named("t").guestfwd(TELEMETRY_IP, 4318, 5555);
        opts.guestfwd[0].proxy = "/t/ferry-guestfwd".into();
        let a = qemu_args(
            &img,
            &opts,
            Path::new("/w/o.qcow2"),
            Path::new("/w/s.log"),
            None,
            2222,
            Path::new("/w"),
        );
        let s = a.join(" ");
        assert!(s.contains(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,guestfwd=tcp:10.0.2.100:4318-cmd:/t/ferry-guestfwd 127.0.0.1 5555"
        ));
        assert!(s.contains("-accel tcg -cpu max -smp 2 -m 2048 -no-reboot"));
        assert!(s.contains("-monitor none"));
        assert!(s.contains("format=raw,readonly=on"));
    }
}
