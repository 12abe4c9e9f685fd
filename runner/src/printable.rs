//! Text from logs, state files and store listings, made safe to print:
//! a CRIU log line or an object key with terminal control sequences in it
//! could otherwise rewrite what the reader sees (hide the real error line,
//! print a fake one).

/// `text` with every control character but newline and tab shown as an
/// escape (`\x1b`, `\r`), so nothing in it drives the terminal.
pub fn printable(text: &str) -> String {
    escape(text, |c| c == '\n' || c == '\t')
}

/// One table cell or one-line field: newlines and tabs escaped too.
pub fn one_line(text: &str) -> String {
    escape(text, |_| false)
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> String {
    if !text.chars().any(|c| c.is_control() && !keep(c)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !c.is_control() || keep(c) => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push_str(&format!("\\x{:02x}", u32::from(c))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_shown_not_obeyed() {
        let hostile = "Error (criu/cr-restore.c:1): real\r\x1b[Kfake line\x1b]0;PWNED\x07";
        assert_eq!(
            printable(hostile),
            "Error (criu/cr-restore.c:1): real\\r\\x1b[Kfake line\\x1b]0;PWNED\\x07"
        );
        assert_eq!(printable("a\n\tb ü\n"), "a\n\tb ü\n");
        assert_eq!(one_line("key\nwith\ttab\u{9b}"), "key\\nwith\\ttab\\x9b");
    }
}
