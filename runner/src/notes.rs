//! Notes: what ferry found about a session and what it did about it, for
//! people. Kept in `state.json` in the order they were made, printed by the
//! foreground as they appear, summed up in the outcome and the report.

use serde::{Deserialize, Serialize};

/// How much a note matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Context only.
    Info,
    /// Something ferry takes care of (and says how).
    Handled,
    /// Something that may still go wrong; the trip goes ahead.
    Warning,
    /// The trip cannot go ahead: nothing was touched.
    Refusal,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Info => "note",
            Level::Handled => "handled",
            Level::Warning => "warning",
            Level::Refusal => "refused",
        }
    }
}

/// One note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    /// The phase that made it.
    pub phase: String,
    /// Stable id of the case (`dbus-connection`, `exec-bit`, ...), for
    /// tests, queries and the docs.
    pub kind: String,
    pub level: Level,
    pub message: String,
    /// What the user can do (for refusals and warnings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Note {
    pub fn new(phase: &str, kind: &str, level: Level, message: impl Into<String>) -> Note {
        Note {
            phase: phase.to_string(),
            kind: kind.to_string(),
            level,
            message: message.into(),
            fix: None,
        }
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Note {
        self.fix = Some(fix.into());
        self
    }

    /// `refused (dbus-connection): <message>. Fix: <fix>`
    pub fn line(&self) -> String {
        match &self.fix {
            Some(fix) => format!(
                "{} ({}): {}. Fix: {fix}",
                self.level.word(),
                self.kind,
                self.message
            ),
            None => format!("{} ({}): {}", self.level.word(), self.kind, self.message),
        }
    }
}

/// The refusals among `notes`, joined into one message (for the phase's
/// error and the outcome's reason).
pub fn refusal_message(notes: &[Note]) -> Option<String> {
    let lines: Vec<String> = notes
        .iter()
        .filter(|n| n.level == Level::Refusal)
        .map(|n| match &n.fix {
            Some(fix) => format!("{} (fix: {fix})", n.message),
            None => n.message.clone(),
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_refusals() {
        let a = Note::new(
            "assess",
            "dbus-connection",
            Level::Refusal,
            "pid 9 holds D-Bus",
        )
        .with_fix("end it");
        let b = Note::new("assess", "pty", Level::Handled, "private devpts");
        assert_eq!(
            a.line(),
            "refused (dbus-connection): pid 9 holds D-Bus. Fix: end it"
        );
        assert_eq!(b.line(), "handled (pty): private devpts");
        assert_eq!(
            refusal_message(&[a, b.clone()]).unwrap(),
            "pid 9 holds D-Bus (fix: end it)"
        );
        assert_eq!(refusal_message(&[b]), None);
        assert!(Level::Refusal > Level::Warning && Level::Warning > Level::Handled);
    }
}
