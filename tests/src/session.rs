//! A long-lived interactive ssh session (`ssh -tt`) into the guest, with every
//! output line stamped on arrival by the host clock: the session a ferry trip
//! must carry across the kexec.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::guest::Guest;

/// Which pipe of the local ssh client a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One output line, stamped when the host read its final newline.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: SystemTime,
    pub mono: Instant,
    pub stream: Stream,
    /// Without the trailing `\r\n`.
    pub text: String,
}

/// The largest silence between two consecutive lines.
#[derive(Debug, Clone)]
pub struct Gap {
    pub duration: Duration,
    pub before: Line,
    pub after: Line,
}

#[derive(Default)]
struct State {
    lines: Vec<Line>,
    /// Bytes after the last newline, per stream.
    partial: [String; 2],
    eof: [bool; 2],
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `ssh -tt root@guest REMOTE_CMD` with its output collected line by line.
/// Dropping it kills that ssh client (its PID only).
pub struct Session {
    child: Mutex<Child>,
    pid: u32,
    stdin: Mutex<Option<ChildStdin>>,
    shared: Arc<Shared>,
    started: Instant,
    log_path: PathBuf,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Session {
    /// Starts `remote_cmd` in the guest under a pty (`ssh -tt`). Lines are
    /// also appended to `session-<n>.log` in the guest's work dir.
    pub fn start(guest: &Guest, remote_cmd: &str) -> Result<Session> {
        let idx = guest.next_session_index();
        let log_path = guest.work_dir().join(format!("session-{idx}.log"));
        let log = Arc::new(Mutex::new(BufWriter::new(
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?,
        )));
        let mut cmd = guest.ssh_command(true);
        // Keep the pty output plain; no keepalives that would give up during the kexec.
        cmd.env("TERM", "dumb")
            .args(["-o", "ServerAliveInterval=0"])
            .arg("--")
            .arg(remote_cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning ssh -tt")?;
        let pid = child.id();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        });
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(
                out,
                Stream::Stdout,
                shared.clone(),
                log.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(
                err,
                Stream::Stderr,
                shared.clone(),
                log.clone(),
            ));
        }
        let stdin = child.stdin.take();
        Ok(Session {
            child: Mutex::new(child),
            pid,
            stdin: Mutex::new(stdin),
            shared,
            started: Instant::now(),
            log_path,
            readers,
        })
    }

    /// The local ssh client's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The transcript file (`<unix time> <out|err> <line>`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Writes `s` plus a newline to the session's stdin.
    pub fn send_line(&self, s: &str) -> Result<()> {
        self.send_raw(format!("{s}\n").as_bytes())
    }

    /// Writes raw bytes to the session's stdin.
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let w = stdin.as_mut().context("session stdin already closed")?;
        w.write_all(bytes).context("writing to the session")?;
        w.flush().context("flushing the session's stdin")
    }

    /// Closes the session's stdin (EOF to the remote side).
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// All complete lines so far.
    pub fn lines(&self) -> Vec<Line> {
        self.shared.lock().lines.clone()
    }

    /// Number of complete lines so far.
    pub fn len(&self) -> usize {
        self.shared.lock().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for a line containing `needle` (searching from the first line;
    /// an unfinished last line counts too).
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Line> {
        self.wait_for_match(0, timeout, |l| l.contains(needle))
            .map(|(_, l)| l)
            .with_context(|| format!("waiting for {needle:?}"))
    }

    /// Waits for a line at index `from` or later that satisfies `pred`;
    /// returns its index and the line. Fails early once the ssh client's
    /// output has ended.
    pub fn wait_for_match<F: Fn(&str) -> bool>(
        &self,
        from: usize,
        timeout: Duration,
        pred: F,
    ) -> Result<(usize, Line)> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some((i, l)) = st
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| pred(&l.text))
            {
                return Ok((i, l.clone()));
            }
            for (k, p) in st.partial.iter().enumerate() {
                if !p.is_empty() && pred(p) {
                    let stream = if k == 0 {
                        Stream::Stdout
                    } else {
                        Stream::Stderr
                    };
                    return Ok((
                        st.lines.len(),
                        Line {
                            at: SystemTime::now(),
                            mono: Instant::now(),
                            stream,
                            text: p.clone(),
                        },
                    ));
                }
            }
            if st.eof[0] && st.eof[1] {
                bail!(
                    "session output ended without a match; last lines:\n{}",
                    tail_text(&st.lines, 20)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?}; last lines:\n{}",
                    tail_text(&st.lines, 20)
                );
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The largest silence between consecutive lines (host monotonic clock):
    /// the downtime the client saw.
    pub fn largest_gap(&self) -> Option<Gap> {
        largest_gap(&self.shared.lock().lines)
    }

    /// Time since the ssh client was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the ssh client is still running.
    pub fn is_alive(&self) -> bool {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        matches!(c.try_wait(), Ok(None))
    }

    /// The ssh client's exit status, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        c.try_wait().ok().flatten()
    }

    /// The whole transcript as text, with host timestamps relative to the start.
    pub fn transcript(&self) -> String {
        let st = self.shared.lock();
        st.lines
            .iter()
            .map(|l| {
                format!(
                    "{:>8.3} {} {}",
                    l.mono.saturating_duration_since(self.started).as_secs_f64(),
                    if l.stream == Stream::Stdout {
                        "out"
                    } else {
                        "err"
                    },
                    l.text
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the ssh client (this PID only) and waits for its output to end.
    pub fn kill(&mut self) {
        {
            let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        self.close_stdin();
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.kill();
    }
}

type Log = Arc<Mutex<BufWriter<File>>>;

fn spawn_reader<R: Read + Send + 'static>(
    mut r: R,
    stream: Stream,
    shared: Arc<Shared>,
    log: Log,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let k = if stream == Stream::Stdout { 0 } else { 1 };
        let mut buf = [0u8; 4096];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let at = SystemTime::now();
            let mono = Instant::now();
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut complete = Vec::new();
            if n == 0 {
                let rest = std::mem::take(&mut st.partial[k]);
                if !rest.is_empty() {
                    complete.push(rest);
                }
                st.eof[k] = true;
            } else {
                st.partial[k].push_str(&String::from_utf8_lossy(&buf[..n]));
                while let Some(pos) = st.partial[k].find('\n') {
                    let mut line: String = st.partial[k].drain(..=pos).collect();
                    line.pop();
                    if line.ends_with('\r') {
                        line.pop();
                    }
                    complete.push(line);
                }
            }
            if !complete.is_empty() {
                let mut w = log.lock().unwrap_or_else(|p| p.into_inner());
                let secs = at
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                for text in complete {
                    let _ = writeln!(w, "{secs:.3} {} {text}", if k == 0 { "out" } else { "err" });
                    st.lines.push(Line {
                        at,
                        mono,
                        stream,
                        text,
                    });
                }
                let _ = w.flush();
            }
            let done = st.eof[k];
            drop(st);
            shared.cond.notify_all();
            if done {
                return;
            }
        }
    })
}

fn largest_gap(lines: &[Line]) -> Option<Gap> {
    lines
        .windows(2)
        .map(|w| Gap {
            duration: w[1].mono.saturating_duration_since(w[0].mono),
            before: w[0].clone(),
            after: w[1].clone(),
        })
        .max_by_key(|g| g.duration)
}

fn tail_text(lines: &[Line], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t0: Instant, ms: u64, text: &str) -> Line {
        Line {
            at: SystemTime::now(),
            mono: t0 + Duration::from_millis(ms),
            stream: Stream::Stdout,
            text: text.into(),
        }
    }

    #[test]
    fn gap() {
        let t0 = Instant::now();
        assert!(largest_gap(&[]).is_none());
        assert!(largest_gap(&[line(t0, 0, "a")]).is_none());
        let g = largest_gap(&[
            line(t0, 0, "a"),
            line(t0, 1000, "b"),
            line(t0, 31_000, "c"),
            line(t0, 32_000, "d"),
        ])
        .unwrap();
        assert_eq!(g.duration, Duration::from_secs(30));
        assert_eq!(g.before.text, "b");
        assert_eq!(g.after.text, "c");
    }
}
