//! Writes a realistic CRIU `-v4` dump log of a given size, for benchmarks.
//!
//! ```text
//! cargo run --release -p ferry-uploaders --example gen_criu_log -- OUT [SIZE_MIB] [SEED]
//! ```
//!
//! The output is deterministic for a given seed. Lines mimic what `criu dump
//! -v4` prints while dumping a process tree: increasing `(SS.uuuuuu)`
//! timestamps, pid columns, `pie:` lines from the parasite, VMA and page
//! transfer lines with hexadecimal addresses, fd and mount lookups, and a few
//! `Error (criu/files-reg.c:1710): …` lines.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

/// xorshift64*: small, fast and deterministic; quality is irrelevant here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libm.so.6",
    "/usr/lib/x86_64-linux-gnu/libpthread.so.0",
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
    "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
    "/usr/lib/x86_64-linux-gnu/libsystemd.so.0.35.0",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
    "/usr/lib/locale/C.utf8/LC_CTYPE",
    "/usr/bin/bash",
    "/usr/sbin/sshd",
    "/usr/bin/python3.11",
    "/home/runner/work/_temp/job.sh",
    "/var/log/runner/worker.log",
    "/tmp/ferry/session/state.json",
    "/dev/null",
    "/dev/pts/0",
    "/dev/urandom",
];

const COMMS: &[&str] = &[
    "sshd", "bash", "runner", "python3", "cargo", "rustc", "sleep", "tail",
];

const FILES: &[&str] = &[
    "criu/files-reg.c:1710",
    "criu/files-reg.c:1238",
    "criu/mount.c:1079",
    "criu/sk-unix.c:523",
    "criu/cr-dump.c:1643",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: gen_criu_log OUT [SIZE_MIB] [SEED]");
        return ExitCode::from(2);
    };
    let mib: u64 = match args.get(1).map(|s| s.parse()) {
        None => 256,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("gen_criu_log: SIZE_MIB {:?}: {e}", args[1]);
            return ExitCode::from(2);
        }
    };
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(42);
    match generate(out, mib << 20, seed) {
        Ok(n) => {
            eprintln!("gen_criu_log: wrote {n} bytes to {out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen_criu_log: {out}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(path: &str, target: u64, seed: u64) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(seed | 1);
    let mut micros: u64 = 200;
    let mut written: u64 = 0;
    let mut line = String::with_capacity(256);
    let mut pids: Vec<u64> = (0..24).map(|i| 1000 + i * 37 + rng.below(30)).collect();
    let mut vma = 0x7f00_0000_0000u64 + (rng.below(0xfff) << 28);

    let header = "(00.000000) Version: 3.19 (gitid v3.19)\n\
         (00.000012) Running on ci-runner-7 Linux 6.1.0-28-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 x86_64\n\
         (00.000031) Loaded kdat cache from /run/criu/criu.kdat\n\
         (00.000102) ========================================\n\
         (00.000105) Dumping processes (pid: 1000 comm: runner)\n\
         (00.000106) ========================================\n";
    w.write_all(header.as_bytes())?;
    written += header.len() as u64;

    while written < target {
        micros += 1 + rng.below(40) + if rng.below(500) == 0 { 20_000 } else { 0 };
        line.clear();
        use std::fmt::Write as _;
        let _ = write!(
            line,
            "({:02}.{:06}) ",
            micros / 1_000_000,
            micros % 1_000_000
        );
        let pid = pids[rng.below(pids.len() as u64) as usize];
        let r = rng.below(1000);
        let _ = match r {
            0..=179 => {
                let fd = rng.below(64);
                write!(
                    line,
                    "{pid}: Dumping path for {fd} fd via self {} [{}]",
                    rng.below(32),
                    rng.pick(LIBS)
                )
            }
            180..=339 => {
                vma += (1 + rng.below(64)) << 12;
                let len = (1 + rng.below(512)) << 12;
                let l = write!(
                    line,
                    "{:#x}-{:#x} ({}K) prot {:#x} flags {:#x} fdflags 0{:o} st {:#x} off {:#x} reg fp  shmid: {:#x}",
                    vma,
                    vma + len,
                    len >> 10,
                    rng.below(8),
                    [0x2, 0x22, 0x802, 0x4022][rng.below(4) as usize],
                    [0, 2, 0o100000][rng.below(3) as usize],
                    [0x41, 0x201, 0x1041][rng.below(3) as usize],
                    rng.below(0x400) << 12,
                    rng.below(1 << 20)
                );
                vma += len;
                l
            }
            340..=469 => match rng.below(4) {
                0 => write!(
                    line,
                    "pie: {pid}: __fetched msg: {} {} {}",
                    rng.below(16),
                    rng.below(16),
                    rng.below(2)
                ),
                1 => write!(line, "pie: {pid}: Daemon waits for command"),
                2 => write!(
                    line,
                    "pie: {pid}: __sent ack msg: {} {} {}",
                    rng.below(16),
                    rng.below(16),
                    rng.below(2)
                ),
                _ => write!(
                    line,
                    "pie: {pid}: vmsplice {:#x} pages to pipe {}",
                    rng.below(4096),
                    rng.below(64)
                ),
            },
            470..=619 => write!(
                line,
                "page-pipe: Add iov to page pipe (ppb {:#x}) {:#x}/{}",
                0x5600_0000_0000u64 + (rng.below(1 << 24) << 4),
                vma + (rng.below(1 << 16) << 12),
                rng.below(1024)
            ),
            620..=719 => write!(
                line,
                "page-xfer: Xfer {:#x} pages {} (off {:#x}, pgoff {:#x})",
                vma + (rng.below(1 << 16) << 12),
                rng.below(256),
                rng.below(1 << 30),
                rng.below(1 << 20) << 12
            ),
            720..=799 => write!(
                line,
                "fdinfo: type: {:#x} flags: 0{:o}/{:o} pos: {:#x} fd: {}",
                rng.below(24),
                [0o2, 0o100002, 0o2004002][rng.below(3) as usize],
                rng.below(2),
                rng.below(1 << 20),
                rng.below(64)
            ),
            800..=859 => write!(
                line,
                "mnt: Path `{}' resolved to `{}' mountpoint",
                ["/", "/proc", "/sys", "/dev", "/dev/pts", "/run", "/tmp"][rng.below(7) as usize],
                ["/", "/proc", "/sys", "/dev", "/dev/pts"][rng.below(5) as usize]
            ),
            860..=909 => write!(
                line,
                "sockets: Collected: ino {:#x} family AF_UNIX type SOCK_STREAM state {} name {}",
                rng.below(1 << 24),
                rng.below(12),
                [
                    "/run/systemd/journal/stdout",
                    "@/tmp/.X11-unix/X0",
                    "/run/dbus/system_bus_socket"
                ][rng.below(3) as usize]
            ),
            910..=949 => write!(
                line,
                "{pid}: Collecting fds (pid: {pid})\n({:02}.{:06}) {pid}: Found {} file descriptors",
                micros / 1_000_000,
                micros % 1_000_000,
                rng.below(200)
            ),
            950..=989 => {
                let comm = rng.pick(COMMS);
                if rng.below(50) == 0 {
                    let i = rng.below(pids.len() as u64) as usize;
                    pids[i] = 1000 + rng.below(60_000);
                }
                write!(
                    line,
                    "Seized task {pid}, state {} ({comm}): threads {}",
                    rng.below(3),
                    1 + rng.below(8)
                )
            }
            _ => {
                if rng.below(10) == 0 {
                    write!(
                        line,
                        "Error ({}): Can't lookup mount={} for fd={} path={}",
                        rng.pick(FILES),
                        rng.below(4096),
                        rng.below(64),
                        rng.pick(LIBS)
                    )
                } else {
                    write!(
                        line,
                        "Warn  (criu/kerndat.c:{}): Can't keep kdat cache on non-tempfs",
                        800 + rng.below(900)
                    )
                }
            }
        };
        line.push('\n');
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    w.flush()?;
    Ok(written)
}
