//! The bundle reader on arbitrary bytes (as gzip, and as a tar gzipped
//! here): open, verify and extract must fail cleanly, never write outside
//! the target directory, never panic.
#![no_main]

use std::io::Write;

use ferry_uploaders::BundleReader;
use ferry_uploaders::bundle::ExtractLimits;
use libfuzzer_sys::fuzz_target;

fn try_bundle(bytes: &[u8]) {
    let dir = std::env::temp_dir().join(format!("ferry-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("b.tar.gz");
    std::fs::write(&path, bytes).expect("write input");
    if let Ok(r) = BundleReader::open(&path) {
        let _ = r.verify();
        let _ = r.read_file("logs/dump.log");
        let limits = ExtractLimits { max_total_bytes: 1 << 20, max_entries: 1000 };
        let _ = r.extract_to(&dir.join("out"), &limits);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fuzz_target!(|data: &[u8]| {
    try_bundle(data);
    // Most inputs are not gzip: also try them as the tar inside.
    try_bundle(&flate2_like(data));
});

/// A stored (uncompressed) gzip member around `data`, so the tar layer is
/// reached without a compression library here.
fn flate2_like(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let n = c.len() as u16;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.write_all(c).expect("vec");
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (0u32.wrapping_sub(crc & 1)));
        }
    }
    !crc
}
