//! `ferry-guestfwd HOST PORT`: the program QEMU runs for each connection a
//! guest makes to a `guestfwd` address (`guestfwd=…-cmd:ferry-guestfwd …`).
//!
//! slirp hands the guest's connection to it as stdin/stdout (and stderr:
//! nothing may be printed there, it would reach the guest). It connects to
//! HOST:PORT on this machine and copies both ways, passing each side's end
//! of stream on, so an HTTP client in the guest sees the host server's
//! answer and its close. One process per connection, unlike the chardev
//! form of `guestfwd`, which QEMU opens once at start-up and shares for the
//! life of the VM.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port] = args.as_slice() else {
        return ExitCode::from(2);
    };
    let Ok(port) = port.parse::<u16>() else {
        return ExitCode::from(2);
    };
    // Nobody listens: exit, and slirp resets the guest's connection, which
    // is what a closed port looks like from the guest.
    let Ok(upstream) = TcpStream::connect((host.as_str(), port)) else {
        return ExitCode::from(1);
    };
    let Ok(up) = upstream.try_clone() else {
        return ExitCode::from(1);
    };
    let to_host = std::thread::spawn(move || {
        copy(std::io::stdin().lock(), &up);
        let _ = up.shutdown(Shutdown::Write);
    });
    copy(&upstream, std::io::stdout().lock());
    // The host closed: pass the end of stream to the guest (stdout is the
    // guest's socket; shutting it down sends the FIN).
    // SAFETY: shutdown(2) on our own stdout descriptor; no memory involved.
    unsafe { libc::shutdown(1, libc::SHUT_WR) };
    let _ = to_host.join();
    ExitCode::SUCCESS
}
