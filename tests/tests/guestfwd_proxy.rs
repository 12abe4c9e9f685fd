//! `ferry-guestfwd`, the per-connection proxy QEMU runs for a `guestfwd`,
//! driven the way slirp drives it: the guest's connection is one end of a
//! socket pair, given to the proxy as stdin, stdout and stderr.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::otlp_receiver::OtlpReceiver;

fn proxy(port: u16) -> (UnixStream, std::process::Child) {
    let (guest, slirp) = UnixStream::pair().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferry-guestfwd"))
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(
            slirp.try_clone().unwrap(),
        )))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(
            slirp.try_clone().unwrap(),
        )))
        .stderr(Stdio::from(std::os::fd::OwnedFd::from(slirp)))
        .spawn()
        .unwrap();
    guest
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (guest, child)
}

#[test]
fn one_request_per_connection_reaches_the_host_and_its_answer_comes_back() {
    let rx = OtlpReceiver::start().unwrap();
    for _ in 0..3 {
        let (mut guest, mut child) = proxy(rx.port());
        // Not protobuf: the strict receiver answers 400, which is the point
        // here (its answer and close travel back through the proxy).
        guest
            .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 3\r\n\r\n\xff\xff\xff")
            .unwrap();
        let mut answer = String::new();
        guest.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
        guest.shutdown(Shutdown::Both).unwrap();
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(rx.requests().len(), 3, "three connections, three requests");
}

#[test]
fn a_closed_port_closes_the_guests_connection_and_prints_nothing() {
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let (mut guest, mut child) = proxy(port);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let mut rest = Vec::new();
    guest.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the guest must read nothing: {rest:?}");
}
