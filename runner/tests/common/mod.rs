//! A small fluent runner for CLI tests: `Ferry::new().arg("diagnose")
//! .arg(path).run().code(1).stdout_has("pid-in-use")`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub struct Ferry {
    cmd: Command,
}

impl Ferry {
    pub fn new() -> Ferry {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.env_remove("FERRY_CONFIG").env("NO_COLOR", "1");
        Ferry { cmd }
    }
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Ferry {
        self.cmd.arg(a);
        self
    }
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Ferry {
        self.cmd.env(k, v);
        self
    }
    pub fn env_remove(mut self, k: &str) -> Ferry {
        self.cmd.env_remove(k);
        self
    }
    pub fn run(mut self) -> Run {
        let out = self.cmd.output().expect("run the ferry binary");
        Run { out }
    }
}

pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn show(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.out.status.code(),
            self.stdout(),
            self.stderr()
        )
    }
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.out.status.code(), Some(code), "{}", self.show());
        self
    }
    pub fn stdout_has(self, s: &str) -> Run {
        assert!(
            self.stdout().contains(s),
            "stdout lacks {s:?}\n{}",
            self.show()
        );
        self
    }
    pub fn stdout_lacks(self, s: &str) -> Run {
        assert!(
            !self.stdout().contains(s),
            "stdout has {s:?}\n{}",
            self.show()
        );
        self
    }
    pub fn stderr_has(self, s: &str) -> Run {
        assert!(
            self.stderr().contains(s),
            "stderr lacks {s:?}\n{}",
            self.show()
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.show()))
    }
}
