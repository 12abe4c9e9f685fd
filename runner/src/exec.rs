//! External commands: each one a span, its output in its own log file.
//!
//! Phases talk to [`Runner`], so whether `criu` is real or a test double is
//! not their business.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::Empty;

use crate::telemetry::{self, SpanSink, names};

/// How much of a command's output is kept in memory (the rest is in its log).
const TAIL_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("`{program}` was not found: {hint}")]
    NotFound { program: String, hint: String },
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` did not finish within {secs} s and was killed")]
    Timeout { program: String, secs: u64 },
    #[error("`{command}` failed ({status}){}", tail_suffix(.tail))]
    Failed {
        command: String,
        status: String,
        tail: String,
    },
}

fn tail_suffix(tail: &str) -> String {
    let last: Vec<&str> = tail.lines().rev().take(3).collect();
    if last.is_empty() {
        String::new()
    } else {
        let mut lines = last;
        lines.reverse();
        format!(": {}", lines.join(" | "))
    }
}

/// One command to run.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Name of the log file under the run's `logs/` (default: the program).
    pub log_name: Option<String>,
    pub timeout: Option<Duration>,
    /// What to tell the user when the program is missing.
    pub missing_hint: Option<String>,
    /// Keep all of stdout in memory (firewall rules, journals), not only
    /// its tail; stdout then stays out of the command's log file.
    pub full_stdout: bool,
}

impl CommandSpec {
    pub fn new(program: impl Into<String>) -> Self {
        CommandSpec {
            program: program.into(),
            ..Default::default()
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn log_name(mut self, name: impl Into<String>) -> Self {
        self.log_name = Some(name.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    pub fn full_stdout(mut self) -> Self {
        self.full_stdout = true;
        self
    }
    pub fn missing_hint(mut self, h: impl Into<String>) -> Self {
        self.missing_hint = Some(h.into());
        self
    }
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a finished command left.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub command: String,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub log_file: Option<PathBuf>,
    pub duration: Duration,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// Turn a non-zero exit into an error that carries the output's tail.
    pub fn check(self) -> Result<CommandOutput, ExecError> {
        if self.success() {
            return Ok(self);
        }
        let status = match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".into(),
        };
        let mut tail = self.stderr.clone();
        if tail.trim().is_empty() {
            tail = self.stdout.clone();
        }
        if let Some(log) = &self.log_file {
            tail.push_str(&format!("\n(full output: {})", log.display()));
        }
        Err(ExecError::Failed {
            command: self.command,
            status,
            tail,
        })
    }
}

/// The seam between phases and the processes they start.
pub trait Runner: Send + Sync {
    fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, ExecError>;
}

/// Runs real processes.
pub struct SystemRunner {
    logs_dir: Mutex<Option<PathBuf>>,
    secrets: Vec<String>,
    spans: SpanSink,
    seq: AtomicU32,
}

impl SystemRunner {
    pub fn new(spans: SpanSink, secrets: Vec<String>) -> Self {
        SystemRunner {
            logs_dir: Mutex::new(None),
            secrets,
            spans,
            seq: AtomicU32::new(0),
        }
    }

    pub fn set_logs_dir(&self, dir: PathBuf) {
        if let Ok(mut d) = self.logs_dir.lock() {
            *d = Some(dir);
        }
    }

    fn redact(&self, s: &str) -> String {
        redact_all(s, &self.secrets)
    }

    fn log_path(&self, spec: &CommandSpec) -> Option<PathBuf> {
        let dir = self.logs_dir.lock().ok()?.clone()?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let base = spec.log_name.clone().unwrap_or_else(|| {
            std::path::Path::new(&spec.program)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "command".into())
        });
        let safe: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Some(dir.join(format!("cmd-{}-{n:02}-{safe}.log", std::process::id())))
    }
}

impl Runner for SystemRunner {
    fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, ExecError> {
        let command = self.redact(&spec.display());
        let program_name = std::path::Path::new(&spec.program)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.program.clone());
        let log_file = self.log_path(spec);
        let span = tracing::info_span!(
            "exec",
            otel.name = %format!("{}{program_name}", names::SPAN_EXEC_PREFIX),
            process.executable.name = %program_name,
            process.command_line = %command,
            process.pid = Empty,
            process.exit.code = Empty,
            ferry.output.tail = Empty,
            ferry.log.file = Empty,
            error.type = Empty,
        );
        let _enter = span.enter();
        if let Some(log) = &log_file {
            span.record("ferry.log.file", log.display().to_string().as_str());
        }
        tracing::debug!(command = %command, "running");

        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if let Some(tp) = telemetry::child_traceparent(&self.spans) {
            cmd.env("TRACEPARENT", tp);
        }
        if let Some(ts) = telemetry::child_tracestate(&self.spans) {
            cmd.env("TRACESTATE", ts);
        }
        // Its own process group, so a timeout kills `sh -c`'s children too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| {
            span.record("error.type", "spawn");
            if source.kind() == std::io::ErrorKind::NotFound {
                ExecError::NotFound {
                    program: spec.program.clone(),
                    hint: spec
                        .missing_hint
                        .clone()
                        .unwrap_or_else(|| "install it or fix PATH".into()),
                }
            } else {
                ExecError::Spawn {
                    program: spec.program.clone(),
                    source,
                }
            }
        })?;
        span.record("process.pid", child.id());

        let log = log_file.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let log = Arc::new(Mutex::new(log));
        if let Ok(mut guard) = log.lock()
            && let Some(f) = guard.as_mut()
        {
            let _ = writeln!(f, "$ {command}");
        }
        let out_reader = child.stdout.take().map(|r| {
            spawn_reader(
                r,
                (!spec.full_stdout).then(|| log.clone()),
                self.secrets.clone(),
                spec.full_stdout,
            )
        });
        let err_reader = child
            .stderr
            .take()
            .map(|r| spawn_reader(r, Some(log.clone()), self.secrets.clone(), false));

        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            if let Some(limit) = spec.timeout
                && started.elapsed() > limit
            {
                // SAFETY: kill(2) on the group we created; no memory involved.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                span.record("error.type", "timeout");
                return Err(ExecError::Timeout {
                    program: spec.program.clone(),
                    secs: limit.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = err_reader.and_then(|h| h.join().ok()).unwrap_or_default();
        let code = status.and_then(|s| s.code());
        if let Some(c) = code {
            span.record("process.exit.code", c);
        }
        if code != Some(0) {
            span.record("error.type", "exit_status");
        }
        let tail: String = last_lines(
            if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            },
            5,
        );
        span.record("ferry.output.tail", tail.as_str());
        Ok(CommandOutput {
            command,
            code,
            stdout,
            stderr,
            log_file,
            duration: started.elapsed(),
        })
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let mut v: Vec<&str> = s.lines().rev().take(n).collect();
    v.reverse();
    v.join("\n")
}

fn spawn_reader<R: Read + Send + 'static>(
    mut reader: R,
    log: Option<Arc<Mutex<Option<std::fs::File>>>>,
    secrets: Vec<String>,
    keep_all: bool,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        // Redaction works on whole lines so a secret split across two reads
        // is still caught; an endless line is cut at 64 KiB.
        let mut line: Vec<u8> = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let flush = |line: &mut Vec<u8>, kept: &mut Vec<u8>| {
            let text = redact_all(&String::from_utf8_lossy(line), &secrets);
            if let Some(log) = &log
                && let Ok(mut guard) = log.lock()
                && let Some(f) = guard.as_mut()
            {
                let _ = f.write_all(text.as_bytes());
            }
            kept.extend_from_slice(text.as_bytes());
            if !keep_all && kept.len() > 2 * TAIL_BYTES {
                kept.drain(..kept.len() - TAIL_BYTES);
            }
            line.clear();
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                line.push(b);
                if b == b'\n' || line.len() >= TAIL_BYTES {
                    flush(&mut line, &mut kept);
                }
            }
        }
        if !line.is_empty() {
            flush(&mut line, &mut kept);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

fn redact_all(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "[REDACTED]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(dir: &std::path::Path) -> SystemRunner {
        let r = SystemRunner::new(SpanSink::default(), vec!["s3cr3t-value".into()]);
        r.set_logs_dir(dir.to_path_buf());
        r
    }

    #[test]
    fn captures_output_exit_code_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let out = runner(dir.path())
            .run(&CommandSpec::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        let log = std::fs::read_to_string(out.log_file.as_ref().unwrap()).unwrap();
        assert!(log.contains("out\n") && log.contains("err\n"), "{log}");
        let err = out.check().unwrap_err().to_string();
        assert!(err.contains("exit code 3") && err.contains("err"), "{err}");
    }

    #[test]
    fn secrets_never_reach_output_or_log() {
        let dir = tempfile::tempdir().unwrap();
        let out = runner(dir.path())
            .run(&CommandSpec::new("sh").args(["-c", "echo token=s3cr3t-value"]))
            .unwrap();
        assert_eq!(out.stdout, "token=[REDACTED]\n");
        assert!(!out.command.contains("s3cr3t-value"));
        let log = std::fs::read_to_string(out.log_file.unwrap()).unwrap();
        assert!(log.starts_with("$ sh -c echo token=[REDACTED]"), "{log}");
        assert!(!log.contains("s3cr3t-value"), "{log}");
    }

    #[test]
    fn full_stdout_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        // 200k lines of 10 bytes: far beyond the kept tail.
        let out = runner(dir.path())
            .run(
                &CommandSpec::new("sh")
                    .args(["-c", "seq 1000001 1200000"])
                    .full_stdout(),
            )
            .unwrap();
        assert_eq!(out.stdout.lines().count(), 200_000);
        assert!(out.stdout.starts_with("1000001\n"));
        let tail = runner(dir.path())
            .run(&CommandSpec::new("sh").args(["-c", "seq 1000001 1200000"]))
            .unwrap();
        assert!(tail.stdout.len() <= 2 * TAIL_BYTES);
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let err = runner(dir.path())
            .run(
                &CommandSpec::new("sh")
                    .args(["-c", &script])
                    .timeout(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }));
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !marker.exists(),
            "a child of the timed-out command kept running"
        );
    }

    #[test]
    fn missing_program_names_it_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = runner(dir.path())
            .run(&CommandSpec::new("no-such-ferry-tool").missing_hint("apt-get install criu"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-ferry-tool") && err.contains("apt-get install criu"),
            "{err}"
        );
    }

    #[test]
    fn timeout_kills_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let err = runner(dir.path())
            .run(
                &CommandSpec::new("sleep")
                    .arg("30")
                    .timeout(Duration::from_millis(200)),
            )
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
