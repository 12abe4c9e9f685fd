//! Dropbox's `content_hash`: SHA-256 of the concatenated SHA-256 digests
//! of the content's 4 MiB blocks (the last one shorter; an empty file has
//! no block, so its hash is SHA-256 of nothing).
//!
//! A bundle is read once up front: its block digests (32 bytes per 4 MiB)
//! give the whole file's hash, which the idempotency check and the final
//! comparison need, and the hash of any request body that starts on a
//! block boundary, which every upload request carries so the server
//! refuses bytes damaged on the way.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The block size of the hash, and the unit upload chunks are made of.
pub const BLOCK: u64 = 4 * 1024 * 1024;

/// A streaming `content_hash`.
#[derive(Clone, Default)]
pub struct ContentHasher {
    block: Sha256,
    in_block: u64,
    digests: Vec<[u8; 32]>,
}

impl ContentHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (BLOCK - self.in_block) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.block.update(now);
            self.in_block += now.len() as u64;
            if self.in_block == BLOCK {
                self.close_block();
            }
            data = rest;
        }
    }

    fn close_block(&mut self) {
        let d = std::mem::take(&mut self.block).finalize();
        self.digests.push(d.into());
        self.in_block = 0;
    }

    /// The block digests so far, the partial last block closed.
    pub fn into_blocks(mut self) -> Vec<[u8; 32]> {
        if self.in_block > 0 {
            self.close_block();
        }
        self.digests
    }

    /// The lowercase hex `content_hash`.
    pub fn finish(self) -> String {
        hash_of_digests(&self.into_blocks())
    }
}

fn hash_of_digests(digests: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// What an upload needs to know about its source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the whole file, lowercase hex (for the receipt).
    pub sha256: String,
    /// The whole file's `content_hash`.
    pub content_hash: String,
    blocks: Vec<[u8; 32]>,
}

impl FileDigest {
    /// Reads `path` once.
    pub fn of_file(path: &Path) -> io::Result<Self> {
        let mut f = File::open(path)?;
        let mut whole = Sha256::new();
        let mut content = ContentHasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            whole.update(&buf[..n]);
            content.update(&buf[..n]);
            size += n as u64;
        }
        let blocks = content.into_blocks();
        Ok(FileDigest {
            size,
            sha256: hex::encode(whole.finalize()),
            content_hash: hash_of_digests(&blocks),
            blocks,
        })
    }

    /// The `content_hash` of the bytes `[start, end)`, when the range is
    /// made of whole blocks (its end may be the end of the file); `None`
    /// for a range that would need the file read again.
    pub fn range_hash(&self, start: u64, end: u64) -> Option<String> {
        if start == end && end <= self.size {
            return Some(hash_of_digests(&[]));
        }
        if !start.is_multiple_of(BLOCK)
            || (!end.is_multiple_of(BLOCK) && end != self.size)
            || end < start
        {
            return None;
        }
        let first = (start / BLOCK) as usize;
        let last = end.div_ceil(BLOCK) as usize;
        self.blocks.get(first..last).map(hash_of_digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hash(data: &[u8]) -> String {
        let mut h = ContentHasher::new();
        h.update(data);
        h.finish()
    }

    #[test]
    fn research_test_vectors() {
        assert_eq!(
            hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash(b"hello\n"),
            "ecb65bb98f9d905b70458986c39fcbad7715e5f2fcc3b1f07767d7c83e2438cc"
        );
        assert_eq!(
            hash(&vec![0u8; 4_194_305]),
            "14a4d47f23a30177885d9820122f17d2d3a55fe63f7f5c27b95f689e0b2accd6"
        );
    }

    #[test]
    fn split_updates_and_the_file_digest_agree() {
        let data: Vec<u8> = (0..(3 * BLOCK + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut h = ContentHasher::new();
        for piece in data.chunks(1_000_003) {
            h.update(piece);
        }
        let whole = h.finish();
        assert_eq!(whole, hash(&data));

        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let d = FileDigest::of_file(f.path()).unwrap();
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.content_hash, whole);
        assert_eq!(d.sha256, hex::encode(Sha256::digest(&data)));
        // A range of whole blocks, and the tail, hash as their own bytes.
        let b = BLOCK as usize;
        assert_eq!(d.range_hash(BLOCK, 3 * BLOCK), Some(hash(&data[b..3 * b])));
        assert_eq!(d.range_hash(2 * BLOCK, d.size), Some(hash(&data[2 * b..])));
        assert_eq!(d.range_hash(d.size, d.size), Some(hash(b"")));
        assert_eq!(d.range_hash(0, d.size), Some(whole));
        assert_eq!(d.range_hash(1, BLOCK), None);
        assert_eq!(d.range_hash(0, BLOCK + 1), None);
    }
}
