//! 100 MiB request and response bodies through the real binary, streamed with bounded memory:
//! the proxy's peak resident memory stays far below the bytes that went through it, and the
//! capture accounts for every byte.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BODY: usize = 100 * 1024 * 1024;
/// Peak RSS allowed for the proxy process (MiB). Buffers are 64 KiB per direction per
/// connection, records ≤ 1 MiB each and the hand-off queue ≤ 64 MiB: 160 MiB leaves room for
/// allocator slack while staying well below the 200 MiB that crossed it.
const MAX_PEAK_RSS_MIB: u64 = 160;

fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn hundred_mib_each_way_with_bounded_memory() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_capture-proxy"))
        .args([
            "--destinationUri",
            &format!("http://{}", origin.addr()),
            "--listenPort",
            "0",
            "--listen-address",
            "127.0.0.1",
            "--admin-listen",
            "off",
            "--numThreads",
            "1",
            "--traceDirectory",
        ])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "proxy exited before listening"
        );
        if let Some(i) = line.find("addr=") {
            if line.contains("listening") {
                let a = line[i + 5..].split_whitespace().next().unwrap().to_string();
                break a.parse::<std::net::SocketAddr>().unwrap();
            }
        }
    };
    std::thread::spawn(move || for _ in err.lines() {});

    // Upload 100 MiB, echoed back: 200 MiB through the proxy on one connection.
    let body: Vec<u8> = (0..BODY).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {BODY}\r\n\r\n");
    let mut reader = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        s.write_all(head.as_bytes()).unwrap();
        for chunk in body.chunks(1 << 20) {
            s.write_all(chunk).unwrap();
        }
        s.write_all(b"GET /large?bytes=104857600 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        (s, body)
    });
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    let (_s, body) = writer.join().unwrap();
    // Two responses, the first echoing the body.
    let first_body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        &got[first_body_at..first_body_at + BODY],
        &body[..],
        "echo intact"
    );
    assert!(
        got.len() > 2 * BODY,
        "both bodies arrived ({} bytes)",
        got.len()
    );

    let peak = peak_rss_kib(child.id()) / 1024;
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    assert!(peak < MAX_PEAK_RSS_MIB, "proxy peak RSS {peak} MiB");

    let trace = Trace::load(dir.path());
    let conn = trace.single();
    conn.check();
    assert_eq!(conn.reads().len(), head_len_post() + BODY + GET_LEN);
    assert_eq!(conn.writes(), got);
}

fn head_len_post() -> usize {
    format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {BODY}\r\n\r\n").len()
}
const GET_LEN: usize =
    "GET /large?bytes=104857600 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".len();
