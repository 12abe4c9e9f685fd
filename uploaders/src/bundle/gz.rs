//! Parallel gzip: the stream is cut into blocks, each block is compressed
//! by a small thread pool into a complete gzip member of its own, and the
//! members are written out in order.
//!
//! A concatenation of gzip members is itself a valid gzip file (RFC 1952
//! §2.2); GNU gzip, GNU tar, Python, Go and flate2's `MultiGzDecoder` read
//! it whole. (A plain `GzDecoder` stops after the first member, which is why
//! the reader never uses one.) Blocks are independent, so each starts with
//! an empty dictionary; at [`DEFAULT_BLOCK`] = 1 MiB that costs well under
//! 1 % of size on logs.
//!
//! ## Why `libz-rs-sys` and not `flate2::Compress`
//!
//! zlib-rs (the backend flate2 uses here) implements level 6 with zlib-ng's
//! `deflate_medium`, which on CRIU logs is ~4 % larger than GNU `gzip -6`.
//! Its level 7 uses classic lazy matching (`deflate_slow`), and with the
//! match-chain limit cut to 32 by `deflateTune` it produces `gzip -6`-sized
//! output at higher speed than its own level 6 (measured in
//! docs/benchmarks.md). flate2 exposes neither `deflateTune` nor a way to
//! choose the algorithm, so this module drives zlib-rs through its C API
//! crate, `libz-rs-sys` (same code, same crate graph, no C compiler). Levels
//! other than 6 are zlib-rs's own.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use libz_rs_sys as z;

/// Uncompressed bytes per gzip member.
pub const DEFAULT_BLOCK: usize = 1 << 20;

/// `windowBits` for a gzip wrapper with a 32 KiB window.
const GZIP_WINDOW_BITS: i32 = 15 + 16;

/// One zlib-rs deflate stream producing whole gzip members.
struct Deflater {
    /// Boxed: zlib keeps a pointer back to the `z_stream`, so it must not
    /// move after `deflateInit2_`.
    strm: Box<z::z_stream>,
    level: u32,
}

// SAFETY: the stream's state is owned by this value alone and only touched
// through `&mut self`; nothing in it is tied to the creating thread.
unsafe impl Send for Deflater {}

impl Deflater {
    fn new(level: u32) -> io::Result<Self> {
        let level = level.min(9);
        let mut strm = Box::new(z::z_stream::default());
        // SAFETY: `strm` is a valid, default-initialised z_stream that
        // outlives the call; the version and size arguments are those of
        // the linked library.
        let rc = unsafe {
            z::deflateInit2_(
                &mut *strm,
                zlib_level(level),
                z::Z_DEFLATED,
                GZIP_WINDOW_BITS,
                8,
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if rc != z::Z_OK {
            return Err(io::Error::other(format!(
                "deflateInit2 failed with code {rc}"
            )));
        }
        Ok(Deflater { strm, level })
    }

    /// Compresses `input` into `out` (cleared first) as one gzip member.
    fn member(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let strm = &mut *self.strm;
        let avail_in = u32::try_from(input.len())
            .map_err(|_| io::Error::other("gzip block larger than 4 GiB"))?;
        // SAFETY: `strm` was initialised by deflateInit2_ in `new`.
        let rc = unsafe { z::deflateReset(strm) };
        if rc != z::Z_OK {
            return Err(io::Error::other(format!(
                "deflateReset failed with code {rc}"
            )));
        }
        if self.level == 6 {
            // deflateReset restores the level's table entry; re-apply.
            // SAFETY: as above.
            unsafe { z::deflateTune(strm, 8, 16, 128, 32) };
        }
        // SAFETY: as above; deflateBound only reads the stream's settings.
        let bound = unsafe { z::deflateBound(strm, input.len() as _) } as usize;
        out.clear();
        out.reserve(bound);
        let cap = u32::try_from(out.capacity()).unwrap_or(u32::MAX);
        strm.next_in = input.as_ptr();
        strm.avail_in = avail_in;
        strm.next_out = out.as_mut_ptr();
        strm.avail_out = cap;
        // SAFETY: next_in/avail_in describe `input`, next_out/avail_out the
        // spare capacity of `out`; both stay borrowed for the whole call.
        // With a buffer of deflateBound bytes one Z_FINISH call completes.
        let rc = unsafe { z::deflate(strm, z::Z_FINISH) };
        let written = (cap - strm.avail_out) as usize;
        strm.next_in = std::ptr::null();
        strm.avail_in = 0;
        strm.next_out = std::ptr::null_mut();
        strm.avail_out = 0;
        if rc != z::Z_STREAM_END {
            return Err(io::Error::other(format!(
                "deflate did not finish a {} byte block (code {rc})",
                input.len()
            )));
        }
        // SAFETY: deflate initialised exactly `written` bytes of the spare
        // capacity, and written <= capacity.
        unsafe { out.set_len(written) };
        Ok(())
    }
}

impl Drop for Deflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new` and is ended once.
        unsafe { z::deflateEnd(&mut *self.strm) };
    }
}

/// ferry's level 6 runs zlib-rs's lazy matcher (its level 7) with the
/// match-chain limit retuned in [`Deflater::member`].
fn zlib_level(level: u32) -> i32 {
    if level == 6 { 7 } else { level as i32 }
}

/// A finished member, or why it failed.
type Done = io::Result<(Vec<u8>, Vec<u8>)>;

struct Job {
    input: Vec<u8>,
    output: Vec<u8>,
    reply: SyncSender<Done>,
}

struct Pool {
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize, level: u32) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let mut deflater = Deflater::new(level)?;
            let handle = std::thread::Builder::new()
                .name(format!("ferry-gzip-{i}"))
                .spawn(move || worker(&rx, &mut deflater))?;
            workers.push(handle);
        }
        Ok(Pool {
            jobs: Some(tx),
            workers,
        })
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, deflater: &mut Deflater) {
    loop {
        let job = {
            let Ok(guard) = rx.lock() else { return };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let Job {
            input,
            mut output,
            reply,
        } = job;
        let done = deflater
            .member(&input, &mut output)
            .map(|()| (input, output));
        // The writer may have gone away (dropped on an error); fine.
        let _ = reply.send(done);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A `Write` that gzips what it is given, in parallel, as a sequence of
/// independent members. Call [`GzBlockWriter::finish`] to get the inner
/// writer back; dropping it unfinished loses the tail.
pub(crate) struct GzBlockWriter<W: Write> {
    out: W,
    block: Vec<u8>,
    block_size: usize,
    /// `None` when compressing on the calling thread.
    pool: Option<Pool>,
    local: Option<Deflater>,
    pending: VecDeque<Receiver<Done>>,
    max_pending: usize,
    spare_in: Vec<Vec<u8>>,
    spare_out: Vec<Vec<u8>>,
    bytes_in: u64,
    bytes_out: u64,
}

impl<W: Write> GzBlockWriter<W> {
    /// `threads` compression threads (1 = compress on the caller's thread),
    /// `level` 0–9, `block_size` uncompressed bytes per member.
    pub(crate) fn new(out: W, threads: usize, level: u32, block_size: usize) -> io::Result<Self> {
        let threads = threads.max(1);
        let block_size = block_size.clamp(64 << 10, 64 << 20);
        let (pool, local) = if threads == 1 {
            (None, Some(Deflater::new(level)?))
        } else {
            (Some(Pool::new(threads, level)?), None)
        };
        Ok(GzBlockWriter {
            out,
            block: Vec::with_capacity(block_size),
            block_size,
            pool,
            local,
            pending: VecDeque::new(),
            // Enough to keep every worker busy while the caller fills the
            // next block and writes out the oldest; bounds memory to about
            // (2 * threads + 1) blocks.
            max_pending: threads * 2,
            spare_in: Vec::new(),
            spare_out: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
        })
    }

    /// Uncompressed bytes accepted so far.
    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Ends the stream: compresses the last block, waits for all members,
    /// flushes and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        if !self.block.is_empty() || self.bytes_in == 0 {
            self.dispatch()?;
        }
        while !self.pending.is_empty() {
            self.collect_one()?;
        }
        self.out.flush()?;
        self.pool = None;
        let bytes_out = self.bytes_out;
        // Move `out` out of a type with a Drop-free layout.
        let GzBlockWriter { out, .. } = self;
        Ok((out, bytes_out))
    }

    fn dispatch(&mut self) -> io::Result<()> {
        let next = self
            .spare_in
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.block_size));
        let input = std::mem::replace(&mut self.block, next);
        let mut output = self.spare_out.pop().unwrap_or_default();
        if let Some(d) = self.local.as_mut() {
            d.member(&input, &mut output)?;
            self.out.write_all(&output)?;
            self.bytes_out += output.len() as u64;
            self.recycle(input, output);
            return Ok(());
        }
        while self.pending.len() >= self.max_pending {
            self.collect_one()?;
        }
        let (reply, done) = mpsc::sync_channel(1);
        let jobs = self
            .pool
            .as_ref()
            .and_then(|p| p.jobs.as_ref())
            .ok_or_else(|| io::Error::other("gzip worker pool is gone"))?;
        jobs.send(Job {
            input,
            output,
            reply,
        })
        .map_err(|_| io::Error::other("gzip worker threads have exited"))?;
        self.pending.push_back(done);
        // Write out whatever is already finished, oldest first.
        while let Some(front) = self.pending.front() {
            match front.try_recv() {
                Ok(done) => {
                    self.pending.pop_front();
                    self.emit(done)?;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Err(worker_died()),
            }
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let Some(front) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = front.recv().map_err(|_| worker_died())?;
        self.emit(done)
    }

    fn emit(&mut self, done: Done) -> io::Result<()> {
        let (input, output) = done?;
        self.out.write_all(&output)?;
        self.bytes_out += output.len() as u64;
        self.recycle(input, output);
        Ok(())
    }

    fn recycle(&mut self, mut input: Vec<u8>, mut output: Vec<u8>) {
        if self.spare_in.len() < 2 {
            input.clear();
            self.spare_in.push(input);
        }
        if self.spare_out.len() < 2 {
            output.clear();
            self.spare_out.push(output);
        }
    }
}

fn worker_died() -> io::Error {
    io::Error::other("a gzip worker thread died")
}

impl<W: Write> Write for GzBlockWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let room = self.block_size - self.block.len();
            let take = room.min(buf.len());
            self.block.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.block.len() == self.block_size {
                self.dispatch()?;
            }
        }
        self.bytes_in += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Members are cut at block boundaries only; flushing the inner
        // writer is all that can be done without hurting the ratio.
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn roundtrip(data: &[u8], threads: usize, level: u32, block: usize) -> Vec<u8> {
        let mut w = GzBlockWriter::new(Vec::new(), threads, level, block).expect("writer");
        for chunk in data.chunks(70_001) {
            w.write_all(chunk).expect("write");
        }
        let (gz, n) = w.finish().expect("finish");
        assert_eq!(n, gz.len() as u64);
        let mut back = Vec::new();
        MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .expect("decode");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "roundtrip differs");
        gz
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(
                format!(
                    "({:02}.{:06}) {}: line {}\n",
                    i / 1000,
                    i % 1000,
                    1000 + i % 7,
                    i * 7919 % 10007
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(len);
        v
    }

    #[test]
    fn multi_member_roundtrip_at_every_level_and_thread_count() {
        let data = sample(600_000);
        for level in [0, 1, 6, 9] {
            for threads in [1, 2, 3] {
                roundtrip(&data, threads, level, 64 << 10);
            }
        }
    }

    #[test]
    fn empty_input_is_one_empty_member() {
        let gz = roundtrip(&[], 2, 6, 1 << 20);
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn output_is_the_same_whatever_the_thread_count() {
        let data = sample(1_000_000);
        let one = roundtrip(&data, 1, 6, 128 << 10);
        let four = roundtrip(&data, 4, 6, 128 << 10);
        assert!(one == four);
    }
}
