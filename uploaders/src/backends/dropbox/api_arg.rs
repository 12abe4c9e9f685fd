//! `Dropbox-API-Arg`: the JSON argument of a content route, made safe for
//! an HTTP header.
//!
//! Dropbox requires U+007F and every non-ASCII character of the header's
//! JSON to be written as a `\uXXXX` escape (UTF-16 code units, so a
//! character above U+FFFF becomes a surrogate pair). `serde_json` escapes
//! neither, and the `http` crate accepts raw UTF-8 in a header value, so
//! without this step every non-ASCII key would be sent as bytes the API
//! refuses.

use serde::Serialize;

/// `value` as header-safe JSON.
pub fn header_json(value: &impl Serialize) -> Result<String, serde_json::Error> {
    serde_json::to_string(value).map(|s| escape(&s))
}

/// Rewrites U+007F and everything above it as `\uXXXX`. Safe on any JSON
/// text: such characters can only stand inside string literals, where an
/// escape means the same character.
pub fn escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut units = [0u16; 2];
    for c in json.chars() {
        if (c as u32) < 0x7f {
            out.push(c);
            continue;
        }
        for u in c.encode_utf16(&mut units) {
            out.push_str(&format!("\\u{u:04x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropbox_test_vector() {
        // The example of Dropbox's "JSON encoding" page, hex in lowercase as
        // they print it.
        let arg = serde_json::json!({"field": "some_üñîcødé_and_\u{7f}"});
        assert_eq!(
            header_json(&arg).unwrap(),
            r#"{"field":"some_\u00fc\u00f1\u00eec\u00f8d\u00e9_and_\u007f"}"#
        );
    }

    #[test]
    fn astral_characters_become_surrogate_pairs() {
        assert_eq!(
            escape(r#""/logs/😀.tar.gz""#),
            r#""/logs/\ud83d\ude00.tar.gz""#
        );
        let plain = r#"{"path":"/logs/plain-ascii.tar.gz","n":1}"#;
        assert_eq!(escape(plain), plain);
    }

    #[test]
    fn escaped_json_means_the_same_and_is_a_valid_header() {
        let arg = serde_json::json!({"path": "/ferry/ü/日本/😀 \"q\"\u{7f}\n"});
        let s = header_json(&arg).unwrap();
        assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, arg);
        reqwest::header::HeaderValue::from_str(&s).unwrap();
    }
}
