//! The CRIU log scanner, line parser and catalog matcher on arbitrary bytes:
//! no panic, no hang, line numbers within the input.
#![no_main]

use ferry::diagnose::catalog::{Catalog, Level};
use ferry::diagnose::{parse, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cat = Catalog::builtin();
    let mut anchors = vec!["Error (".to_string(), "Warn  (".to_string(), "pie: ".to_string()];
    anchors.extend(cat.line_anchors());
    let ac = scan::anchors(&anchors);
    let total_newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    let stats = scan::scan(data, &ac, 5, |hit| {
        assert!(hit.line_no >= 1 && hit.line_no <= total_newlines + 1);
        let text = String::from_utf8_lossy(hit.text);
        let joined = parse::join_continued(&text);
        let p = parse::parse(&joined);
        let _ = cat.match_log(p.level, p.msg);
        let _ = cat.match_log(Level::Other, p.msg);
        let _ = cat.is_followup(p.msg);
        let _ = cat.match_dmesg(&joined);
    })
    .expect("reading a slice cannot fail");
    assert_eq!(stats.bytes, data.len() as u64);
});
