//! A TCP relay on 127.0.0.1 that delays one direction, for `scripts/loadtest.sh` (kafka-slow).
//!
//! Makes a local Kafka broker "D ms slower" where `tc qdisc ... netem` is unavailable: listens on
//! 127.0.0.1:`--listen-port`, connects each accepted client to 127.0.0.1:`--upstream-port`,
//! forwards client→upstream bytes at once and upstream→client bytes `--delay-ms` after they were
//! read. Order is kept and throughput is not serialised behind the delay: every chunk read from
//! upstream is stamped with its deadline and queued, and a writer sends each one when its
//! deadline comes, so many chunks can be "in the air" at once. Every request/response round trip
//! thus takes `--delay-ms` longer. The broker must advertise the relay's port.
//!
//! CLI: `delay_relay --listen-port P --upstream-port U --delay-ms D` (D may be fractional). Prints
//! one `listening on 127.0.0.1:P` line on stdout once bound; runs until killed (SIGTERM/SIGINT
//! just end the process).
//!
//! Closing: when the client ends its side, upstream gets a half-close (shutdown of writes) and
//! the delayed direction keeps draining; when upstream ends its side, the chunks already queued
//! are still delivered on time and then the client gets a half-close. A read or write error on
//! either socket shuts both sockets down, which wakes and ends all of that connection's threads.
//!
//! Limits: only 127.0.0.1; three threads per relayed connection (blocking sockets), which suits
//! the few connections of a Kafka client and nothing larger; the delay is a sleep, so a round
//! trip grows by `--delay-ms` plus wake-up latencies (+0.6 ms in all for 50 ms on the 2-vCPU
//! test VM, where a 50 ms sleep alone overshoots by ~0.2 ms; +0.05 ms with `--delay-ms 0`); an
//! upstream that cannot be reached makes the relay close the client's connection at once.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes read from a socket at once (one buffer per direction and connection): large enough
/// that a Kafka produce batch or fetch response rarely needs several reads.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Written chunks' buffers waiting to be reused by the reader (so a steady stream of responses
/// allocates nothing once warmed up); when this many are already waiting, a buffer is freed
/// instead. 64: more than the responses a Kafka client has in flight per connection, and at
/// most 64 × READ_CHUNK_BYTES = 16 MiB held per connection in the worst case.
const RECYCLED_BUFFERS_MAX: usize = 64;

struct Args {
    listen_port: u16,
    upstream_port: u16,
    delay: Duration,
}

fn usage() -> ! {
    eprintln!("usage: delay_relay --listen-port P --upstream-port U --delay-ms D");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut listen_port = None;
    let mut upstream_port = None;
    let mut delay_ms: Option<f64> = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen-port" => listen_port = value.parse::<u16>().ok(),
            "--upstream-port" => upstream_port = value.parse::<u16>().ok(),
            "--delay-ms" => delay_ms = value.parse::<f64>().ok().filter(|d| d.is_finite()),
            _ => usage(),
        }
    }
    match (listen_port, upstream_port, delay_ms) {
        (Some(l), Some(u), Some(d)) if d >= 0.0 => Args {
            listen_port: l,
            upstream_port: u,
            delay: Duration::from_secs_f64(d / 1000.0),
        },
        _ => usage(),
    }
}

fn main() -> std::io::Result<()> {
    let args = parse_args();
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.listen_port))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let upstream = SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.upstream_port);
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let delay = args.delay;
        thread::spawn(move || relay(client, upstream, delay));
    }
    Ok(())
}

/// One client connection: this thread writes the delayed upstream→client chunks; two helper
/// threads read the client (forwarding at once) and upstream (queueing with deadlines).
fn relay(client: TcpStream, upstream_addr: SocketAddrV4, delay: Duration) {
    let Ok(upstream) = TcpStream::connect(upstream_addr) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
        client.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
        upstream.try_clone(),
    ) else {
        return;
    };
    let forward = thread::spawn(move || pipe_now(c2, u2));
    let (queue_tx, queue_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let (spare_tx, spare_rx) = mpsc::sync_channel::<Vec<u8>>(RECYCLED_BUFFERS_MAX);
    let reader = thread::spawn(move || read_delayed(u3, c3, delay, queue_tx, spare_rx));
    write_delayed(&client, &upstream, queue_rx, spare_tx);
    let _ = reader.join();
    let _ = forward.join();
}

/// client → upstream, at once; half-closes upstream when the client ends.
fn pipe_now(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// upstream → queue: stamps every chunk with its deadline (read time + delay). Dropping the
/// sender at the end tells the writer that upstream is done.
fn read_delayed(
    mut upstream: TcpStream,
    client: TcpStream,
    delay: Duration,
    queue: Sender<(Instant, Vec<u8>)>,
    spare: Receiver<Vec<u8>>,
) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        match upstream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let deadline = Instant::now() + delay;
                let mut chunk = spare.try_recv().unwrap_or_default();
                chunk.clear();
                chunk.extend_from_slice(buf.get(..n).unwrap_or_default());
                if queue.send((deadline, chunk)).is_err() {
                    break; // the writer failed and is gone
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// queue → client, each chunk at its deadline; half-closes the client once upstream ended and
/// the queue is drained.
fn write_delayed(
    client: &TcpStream,
    upstream: &TcpStream,
    queue: Receiver<(Instant, Vec<u8>)>,
    spare: SyncSender<Vec<u8>>,
) {
    let mut out = client;
    for (deadline, chunk) in queue.iter() {
        let wait = deadline.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            thread::sleep(wait);
        }
        if out.write_all(&chunk).is_err() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return; // dropping `queue` makes the reader's next send fail
        }
        let _ = spare.try_send(chunk); // full (or reader gone): the buffer is freed
    }
    let _ = client.shutdown(Shutdown::Write);
}
