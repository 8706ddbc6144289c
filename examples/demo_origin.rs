//! A tiny stand-in for a search cluster, for `scripts/demo.sh` and manual runs:
//! `cargo run --release --example demo_origin -- 127.0.0.1:19200`.
//! Answers every request with a small JSON body after reading the whole request body
//! (Content-Length or chunked); keep-alive; one thread per connection. Not for benchmarks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19200".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("demo origin listening on {}", listener.local_addr()?);
    for conn in listener.incoming() {
        let conn = conn?;
        let _ = conn.set_nodelay(true);
        std::thread::spawn(move || {
            let _ = serve(conn);
        });
    }
    Ok(())
}

fn serve(conn: TcpStream) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request_line = line.trim_end().to_string();
        if request_line.is_empty() {
            continue;
        }
        let (mut len, mut chunked, mut close) = (0usize, false, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            let (name, value) = (
                name.trim().to_ascii_lowercase(),
                value.trim().to_ascii_lowercase(),
            );
            match name.as_str() {
                "content-length" => len = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value == "close",
                "expect" if value == "100-continue" => {
                    out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?
                }
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                if n == 0 {
                    // trailers until the empty line
                    loop {
                        let mut t = String::new();
                        if r.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..n]);
            }
        } else if len > 0 {
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        }
        let head_only = request_line.starts_with("HEAD ");
        let payload = format!(
            "{{\"cluster_name\":\"demo\",\"status\":\"green\",\"request\":\"{}\",\"body_bytes\":{}}}\n",
            request_line.replace('"', "'"),
            body.len()
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            payload.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        out.write_all(resp.as_bytes())?;
        if !head_only {
            out.write_all(payload.as_bytes())?;
        }
        if close {
            return Ok(());
        }
    }
}
