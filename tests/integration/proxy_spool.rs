//! End-to-end tests of the durable spool (`--spool-dir`): the proxy with a Kafka sink pointed
//! at an rdkafka mock cluster (created per test; 2 brokers, a topic with 3 partitions) and a
//! spool directory. Covers: a broker outage (held POSTs wait only for the spool's fsync,
//! records are spooled, then drained in per-connection order, gap-free, and the spool files
//! are deleted), replay after a restart, torn and corrupt spool data skipped on replay, the
//! spool's size bound (the failure policy applies and the loss is named in the capture), and
//! the real binary killed with SIGKILL (idle, and under load) and restarted.
//!
//! May depend on: the crate's public API (`start`, `config`, `sink::spool` for reading and
//! damaging spool files), `tests/common` (origin, raw client, trace checks; `common::kafka`:
//! mock cluster, topic reader, `inspect`; `common::binary`: the real binary), libc (signals),
//! tempfile.
//!
//! Invariant: every wait is bounded (`KAFKA_WAIT`, socket timeouts); nothing talks to any
//! address but 127.0.0.1; the tests run one at a time (`serial`): they assert latencies and
//! the machine is small.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::capture::proto::traffic_stream::Index;
use capture_proxy::config::{Config, FailurePolicy};
use capture_proxy::sink::spool::{scan_segment, segment_files, Scanned};
use capture_proxy::sink::SinkStats;
use capture_proxy::stats::Counter;
use common::binary::{proxy_command, ProxyProcess, STARTUP_TIMEOUT};
use common::kafka::*;
use common::*;

/// Bound of the waits for records to reach the topic and for the proxy to notice broker
/// state (s): librdkafka reconnects to a broker that came back with a backoff of up to 10 s.
const KAFKA_WAIT: Duration = Duration::from_secs(40);
/// Most time a held POST may take while Kafka is down and the spool takes its record: the
/// spool's fsync, far below the 10 s `--kafka-ack-timeout` a POST would otherwise wait for.
/// Generous for a loaded 2-core machine.
const SPOOLED_POST_MAX: Duration = Duration::from_secs(2);

/// The reader group of this file's raw reads of the topic.
const READER_GROUP: &str = "spool-itest-reader";

/// A mock cluster for one test: records waited for up to `KAFKA_WAIT`.
fn start_kafka() -> Kafka {
    Kafka::start(READER_GROUP, KAFKA_WAIT)
}

/// A proxy to `origin` writing to the mock cluster with its spool in `spool`.
fn spool_proxy(origin: &Origin, k: &Kafka, spool: &Path, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let sink = kafka_sink(&k.bootstrap, "capture-proxy-spool-itest");
    let dir = spool.to_path_buf();
    Proxy::start(origin.addr(), move |cfg| {
        cfg.sink = sink;
        cfg.spool_dir = Some(dir);
        tweak(cfg);
    })
}

fn sink_stats(p: &Proxy) -> &SinkStats {
    &p.handle().sink_stats
}

fn wait_kafka_connected(p: &Proxy, up: bool) {
    wait_until(
        &format!("kafkaConnected = {}", u8::from(up)),
        KAFKA_WAIT,
        || sink_stats(p).kafka_connected.load(Ordering::Relaxed) == u64::from(up),
    );
}

fn spooled(p: &Proxy) -> u64 {
    sink_stats(p).spool_records_spooled.load(Ordering::Relaxed)
}

/// Sends a POST and returns how long the response took.
fn timed_post(c: &mut Client, path: &str, body: &[u8]) -> Duration {
    let t0 = Instant::now();
    c.send(&post(path, body));
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    t0.elapsed()
}

/// (1) Brokers down: held POSTs are answered after the spool's fsync, not after the ack
/// timeout; records go to the spool. Brokers up: every record reaches the topic in
/// per-connection order with no gaps (also for a connection that lives through the outage
/// and the recovery), and the spool files are deleted.
#[test]
fn outage_spools_without_delaying_posts_then_drains_in_order() {
    let _s = serial();
    let k = start_kafka();
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let proxy = spool_proxy(&origin, &k, spool.path(), |_| {});
    wait_kafka_connected(&proxy, true);
    // A connection that lives through everything: its first POST goes straight to Kafka.
    let mut x = proxy.client();
    timed_post(&mut x, "/small?x=1", b"{\"x\":1}");
    let before_outage = spooled(&proxy);

    k.all_down();
    wait_kafka_connected(&proxy, false);
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = proxy.client();
        c.send(&get(&format!("/small?c={i}&r=0")));
        assert_eq!(c.read_response(false).status, 200);
        for j in 0..2 {
            let took = timed_post(
                &mut c,
                &format!("/echo?c={i}&p={j}"),
                format!("{{\"c\":{i},\"p\":{j}}}").as_bytes(),
            );
            assert!(
                took < SPOOLED_POST_MAX,
                "POST with Kafka down took {took:?}"
            );
        }
        finish_client(&mut c);
        clients.push(c);
    }
    let took = timed_post(&mut x, "/small?x=2", b"{\"x\":2}");
    assert!(
        took < SPOOLED_POST_MAX,
        "POST with Kafka down took {took:?}"
    );
    // 4 connections × (2 POST records + final) and x's second POST.
    wait_until("13 records spooled", KAFKA_WAIT, || {
        spooled(&proxy) >= before_outage + 13
    });
    let h = proxy.handle();
    assert_eq!(h.counter(Counter::HoldFailed), 0);
    assert_eq!(h.counter(Counter::RecordsLost), 0);
    assert!(segments(spool.path()) >= 1, "spool files written");
    assert!(sink_stats(&proxy).spool_bytes.load(Ordering::Relaxed) > 0);
    assert_eq!(
        sink_stats(&proxy).healthy.load(Ordering::Relaxed),
        1,
        "ready: the spool takes records"
    );

    k.all_up();
    // Right after recovery x's records still wait in the spool: the next one joins them.
    let took = timed_post(&mut x, "/small?x=3", b"{\"x\":3}");
    assert!(took < SPOOLED_POST_MAX, "{took:?}");
    finish_client(&mut x);
    let got = k.wait_finals(5);
    wait_until("the spool to drain", KAFKA_WAIT, || {
        sink_stats(&proxy).spool_bytes.load(Ordering::Relaxed) == 0
    });
    assert_eq!(segments(spool.path()), 0, "drained spool files are deleted");
    let got = if got.len() < 16 {
        k.wait_records("16 records", |g| g.len() >= 16)
    } else {
        got
    };
    assert_placement_and_order(&got);
    let t = trace(&got);
    for c in clients.iter().chain(std::iter::once(&x)) {
        let conn = conn_of(&t, c);
        conn.check();
        assert_exchange(&conn, c);
    }
    let (r, text) = k.inspect();
    assert!(r.ok(), "{text}");
    assert_eq!(r.complete_connections, 5, "{text}");
    // x: 3 POST records + final; the others 2 POST records + final each.
    assert_eq!(r.records, 16, "no duplicates: {text}");
    let st = sink_stats(&proxy);
    assert_eq!(
        st.spool_records_drained.load(Ordering::Relaxed),
        st.spool_records_spooled.load(Ordering::Relaxed)
    );
    assert_eq!(st.spool_records_refused.load(Ordering::Relaxed), 0);
    assert_eq!(h.counter(Counter::HoldFailed), 0);
    assert_eq!(h.counter(Counter::RecordsLost), 0);
}

/// Runs `n` connections of GET + POST + close through `proxy`; returns the clients.
fn some_traffic(proxy: &Proxy, n: usize, tag: &str) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut c = proxy.client();
            c.send(&get(&format!("/small?{tag}={i}")));
            assert_eq!(c.read_response(false).status, 200);
            let took = timed_post(
                &mut c,
                &format!("/echo?{tag}={i}"),
                format!("{{\"{tag}\":{i}}}").as_bytes(),
            );
            assert!(took < SPOOLED_POST_MAX, "{took:?}");
            finish_client(&mut c);
            c
        })
        .collect()
}

/// (2) Records spooled by one run (brokers down the whole time, then a graceful shutdown)
/// reach Kafka from the next run with the same spool directory.
#[test]
fn restart_replays_the_spool() {
    let _s = serial();
    let k = start_kafka();
    k.all_down();
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let mut a = spool_proxy(&origin, &k, spool.path(), |_| {});
    let clients = some_traffic(&a, 3, "a");
    wait_until("6 records spooled", KAFKA_WAIT, || spooled(&a) >= 6);
    assert_eq!(a.handle().counter(Counter::HoldFailed), 0);
    a.take_handle().shutdown();
    assert!(segments(spool.path()) >= 1, "the spool is kept at shutdown");

    k.all_up();
    assert!(
        k.records().is_empty(),
        "nothing reached Kafka in the first run"
    );
    let b = spool_proxy(&origin, &k, spool.path(), |_| {});
    let got = k.wait_finals(3);
    wait_until("the spool to drain", KAFKA_WAIT, || {
        segments(spool.path()) == 0
    });
    assert_placement_and_order(&got);
    let t = trace(&got);
    for c in &clients {
        let conn = conn_of(&t, c);
        conn.check();
        assert_exchange(&conn, c);
    }
    let (r, text) = k.inspect();
    assert!(r.ok(), "{text}");
    assert_eq!(r.complete_connections, 3, "{text}");
    assert_eq!(r.records, 6, "{text}");
    let st = sink_stats(&b);
    wait_until("6 drained", KAFKA_WAIT, || {
        st.spool_records_drained.load(Ordering::Relaxed) == 6
    });
    assert_eq!(st.spool_records_spooled.load(Ordering::Relaxed), 0);
}

/// (3) A torn tail (the last entry cut short, as by a crash mid-write) and a corrupt entry (a
/// flipped byte) are detected and skipped on replay; everything else arrives.
#[test]
fn torn_tail_and_corrupt_entry_are_skipped_on_replay() {
    let _s = serial();
    let k = start_kafka();
    k.all_down();
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let mut a = spool_proxy(&origin, &k, spool.path(), |_| {});
    some_traffic(&a, 4, "t");
    wait_until("8 records spooled", KAFKA_WAIT, || spooled(&a) >= 8);
    a.take_handle().shutdown();

    let files = segment_files(spool.path()).unwrap();
    let mut entries: Vec<(std::path::PathBuf, u64, u64, String, u32)> = Vec::new();
    for (_, path) in &files {
        for s in scan_segment(path).unwrap() {
            match s {
                Scanned::Entry {
                    offset,
                    len,
                    key,
                    number,
                    ..
                } => entries.push((path.clone(), offset, len, key, number)),
                Scanned::Skipped { .. } => panic!("fresh spool has damage: {path:?}"),
            }
        }
    }
    assert_eq!(entries.len(), 8);
    // Corrupt: a byte in the middle of the third entry's value. Torn: the last entry loses
    // its last 3 bytes.
    let (cpath, coff, clen, ckey, cnum) = entries[2].clone();
    let mut bytes = std::fs::read(&cpath).unwrap();
    bytes[(coff + clen - 10) as usize] ^= 0x5a;
    std::fs::write(&cpath, &bytes).unwrap();
    let (tpath, toff, tlen, tkey, tnum) = entries[7].clone();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tpath)
        .unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        toff + tlen,
        "last entry ends the file"
    );
    f.set_len(toff + tlen - 3).unwrap();
    drop(f);
    let skipped: Vec<Scanned> = segment_files(spool.path())
        .unwrap()
        .iter()
        .flat_map(|(_, p)| scan_segment(p).unwrap())
        .filter(|s| matches!(s, Scanned::Skipped { .. }))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");

    k.all_up();
    let b = spool_proxy(&origin, &k, spool.path(), |_| {});
    let st = sink_stats(&b);
    wait_until("the spool to drain", KAFKA_WAIT, || {
        segments(spool.path()) == 0
    });
    assert_eq!(st.spool_corrupt_skipped.load(Ordering::Relaxed), 2);
    let got = k.wait_records("6 records", |g| g.len() >= 6);
    let have: BTreeSet<(String, u32)> = got
        .iter()
        .map(|g| (g.ts.connection_id.clone(), g.number() as u32))
        .collect();
    let want: BTreeSet<(String, u32)> = entries
        .iter()
        .map(|e| (e.3.clone(), e.4))
        .filter(|e| *e != (ckey.clone(), cnum) && *e != (tkey.clone(), tnum))
        .collect();
    assert_eq!(have, want);
    assert_eq!(got.len(), 6, "no duplicates");
    assert_placement_and_order(&got);
    let (r, text) = k.inspect();
    let damaged = if ckey == tkey { 1 } else { 2 };
    assert_eq!(r.connections, 4, "{text}");
    assert_eq!(r.incomplete_connections, damaged, "{text}");
    assert_eq!(r.complete_connections, 4 - damaged, "{text}");
}

/// (4) The spool's size bound: with Kafka down and the spool full, a held POST's record fails
/// at once, the failure policy applies (forward: counted in holdFailed), and the
/// connection's next record names the lost one.
#[test]
fn full_spool_applies_the_failure_policy() {
    let _s = serial();
    let k = start_kafka();
    k.all_down();
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let proxy = spool_proxy(&origin, &k, spool.path(), |c| {
        c.spool_max_bytes = 8192;
        c.capture_failure_policy = FailurePolicy::Forward;
    });
    let body = vec![b'b'; 3000];
    let mut c = proxy.client();
    for i in 0..2 {
        let took = timed_post(&mut c, &format!("/small?fill={i}"), &body);
        assert!(took < SPOOLED_POST_MAX, "{took:?}");
    }
    let h = proxy.handle();
    assert_eq!(h.counter(Counter::HoldFailed), 0);
    // The third does not fit: it fails at once (no wait for the 10 s ack timeout) and is
    // forwarded anyway.
    let took = timed_post(&mut c, "/small?fill=2", &body);
    assert!(took < SPOOLED_POST_MAX, "{took:?}");
    assert_eq!(h.counter(Counter::HoldFailed), 1);
    assert_eq!(h.counter(Counter::RecordsLost), 1);
    let st = sink_stats(&proxy);
    assert_eq!(st.spool_records_refused.load(Ordering::Relaxed), 1);
    assert!(st.spool_bytes.load(Ordering::Relaxed) <= 8192);
    assert_eq!(origin.requests().len(), 3, "all three POSTs forwarded");

    k.all_up();
    wait_until("the spool to drain", KAFKA_WAIT, || {
        st.spool_bytes.load(Ordering::Relaxed) == 0
    });
    c.send(&get("/small?after=1"));
    assert_eq!(c.read_response(false).status, 200);
    finish_client(&mut c);
    let got = k.wait_finals(1);
    assert_placement_and_order(&got);
    let numbers: Vec<i32> = got.iter().map(Got::number).collect();
    assert_eq!(numbers, vec![1, 2, 4], "record 3 lost");
    let conn = trace(&got).single();
    let ex = conn.exceptions();
    assert_eq!(ex.len(), 1, "{}", conn.dump());
    assert!(
        ex[0].contains("capture record 3 of this connection was lost: sink overloaded"),
        "{ex:?}"
    );
    let (r, text) = k.inspect();
    assert!(!r.ok(), "a lost record is an error: {text}");
    assert!(text.contains("gap: record #3 missing"), "{text}");
    assert_eq!(r.exceptions, 1, "{text}");
}

// ----------------------------------------------------------------------------------------
// The real binary, killed with SIGKILL.
// ----------------------------------------------------------------------------------------

/// Most time from SIGTERM to exit (s): drain timeout below plus the producer's close.
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);

/// The real binary to `origin`, capturing to `kafka` with its spool in `spool`, on port 0 with
/// an admin endpoint on port 0; waits for both `listening` lines.
fn start_binary(kafka: &str, origin: &Origin, spool: &Path) -> ProxyProcess {
    let mut cmd = proxy_command();
    cmd.args([
        "--destinationUri",
        &format!("http://{}", origin.addr()),
        "--listenPort",
        "0",
        "--listen-address",
        "127.0.0.1",
        "--admin-listen",
        "127.0.0.1:0",
        "--kafkaConnection",
        kafka,
        "--spool-dir",
        spool.to_str().unwrap(),
        "--numThreads",
        "1",
        "--drain-timeout",
        "5s",
    ]);
    ProxyProcess::start_with_admin(cmd, STARTUP_TIMEOUT)
}

/// (5) The real binary with brokers down spools the traffic; SIGKILL; restarted with brokers
/// up, it replays the spool: every record the spool had acknowledged (all of them here — the
/// test waits for the spool's counter before the kill) arrives, complete and in order.
#[test]
fn sigkill_then_restart_replays_what_the_spool_acknowledged() {
    let _s = serial();
    let k = start_kafka();
    k.all_down();
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let mut first = start_binary(&k.bootstrap, &origin, spool.path());
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(first.addr);
        c.send(&get(&format!("/small?k={i}")));
        assert_eq!(c.read_response(false).status, 200);
        for j in 0..2 {
            let took = timed_post(&mut c, &format!("/echo?k={i}&p={j}"), b"{\"k\":1}");
            assert!(took < SPOOLED_POST_MAX, "{took:?}");
        }
        finish_client(&mut c);
        clients.push(c);
    }
    // 3 × (2 POST records + final), all fsynced.
    let deadline = Instant::now() + KAFKA_WAIT;
    while first.metric("spoolRecordsSpooled_total") < 9 {
        assert!(Instant::now() < deadline, "records not spooled");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(first.metric("kafkaConnected"), 0);
    assert_eq!(first.metric("holdFailed_total"), 0);
    first.signal(libc::SIGKILL);
    let st = first.wait_exit(EXIT_TIMEOUT);
    assert_eq!(st.code(), None, "killed by a signal");
    assert!(segments(spool.path()) >= 1);

    k.all_up();
    let mut second = start_binary(&k.bootstrap, &origin, spool.path());
    let got = k.wait_finals(3);
    assert_placement_and_order(&got);
    let t = trace(&got);
    for c in &clients {
        let conn = conn_of(&t, c);
        conn.check();
        assert_exchange(&conn, c);
    }
    let deadline = Instant::now() + KAFKA_WAIT;
    while second.metric("spoolBytes") != 0 || segments(spool.path()) != 0 {
        assert!(Instant::now() < deadline, "spool not drained");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(second.metric("spoolRecordsDrained_total"), 9);
    let (r, text) = k.inspect();
    assert!(r.ok(), "{text}");
    assert_eq!(r.complete_connections, 3, "{text}");
    assert_eq!(r.records, 9, "{text}");
    second.stop_ok(EXIT_TIMEOUT);
}

/// (6) Kafka refuses drained records (a permanent produce error, once per request): they
/// stay in the spool and are sent again after the pause; in the end every record is in the
/// topic once, in order.
#[test]
fn drained_records_kafka_refuses_are_retried() {
    use rdkafka::bindings::rd_kafka_resp_err_t as RespErr;
    use rdkafka::types::RDKafkaApiKey;
    let _s = serial();
    let k = start_kafka();
    k.all_down();
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let proxy = spool_proxy(&origin, &k, spool.path(), |_| {});
    let clients = some_traffic(&proxy, 2, "r");
    wait_until("4 records spooled", KAFKA_WAIT, || spooled(&proxy) >= 4);
    k.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
    );
    k.all_up();
    let got = k.wait_finals(2);
    wait_until("the spool to drain", KAFKA_WAIT, || {
        segments(spool.path()) == 0
    });
    assert_placement_and_order(&got);
    let t = trace(&got);
    for c in &clients {
        let conn = conn_of(&t, c);
        conn.check();
        assert_exchange(&conn, c);
    }
    let (r, text) = k.inspect();
    assert!(r.ok(), "{text}");
    assert_eq!(r.records, 4, "no duplicates: {text}");
    let st = sink_stats(&proxy);
    assert_eq!(st.spool_records_drained.load(Ordering::Relaxed), 4);
    assert_eq!(proxy.handle().counter(Counter::RecordsLost), 0);
}

// ----------------------------------------------------------------------------------------
// The real binary, killed with SIGKILL under load.
// ----------------------------------------------------------------------------------------

/// Client threads of the load in (7): each on its own keep-alive connection at a time.
const LOAD_THREADS: usize = 4;
/// GET+POST pairs one connection carries before its client closes it and opens the next: so
/// some connections end (with a final record) before the kill and the rest are open at it.
const PAIRS_PER_CONN: usize = 8;
/// How long the load runs before the SIGKILL (ms): long enough for a few dozen connections
/// and hundreds of spooled POSTs on a small machine, short enough for a quick test.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1500);

/// One client connection of the load in (7), as its client saw it.
struct LoadConn {
    /// Every byte the client wrote (`Client::sent`): the capture's reads must be a prefix.
    sent: Vec<u8>,
    /// Each POST answered 200: its request's byte range in `sent` and when it was sent.
    posts: Vec<(std::ops::Range<usize>, Instant)>,
    /// Requests answered 200 (GETs and POSTs).
    answered: usize,
    /// When the client saw the connection end after its half-close (None: it did not).
    closed_at: Option<Instant>,
    /// The first failure the client saw on it, and when.
    error: Option<(Instant, String)>,
}

impl LoadConn {
    fn fail(&mut self, what: String) {
        self.error.get_or_insert((Instant::now(), what));
    }
}

/// Sends `req` on `c` and reads its answer; true when it was a complete 200.
fn exchange(c: &mut Client, lc: &mut LoadConn, req: &[u8]) -> bool {
    if let Err(e) = c.try_send(req) {
        lc.fail(format!("write: {e}"));
        return false;
    }
    match c.try_read_response(false) {
        Ok(r) if r.status == 200 => {
            lc.answered += 1;
            true
        }
        Ok(r) => {
            lc.fail(format!("status {}", r.status));
            false
        }
        Err(e) => {
            lc.fail(format!("read: {e}"));
            false
        }
    }
}

/// Load thread `t` of (7): connection after connection of GET /small + POST /echo pairs
/// (each request's target and body name thread, connection and pair), until a request
/// fails (the kill) or `stop` is set. Returns every connection it opened.
fn load_thread(addr: SocketAddr, t: usize, stop: &std::sync::atomic::AtomicBool) -> Vec<LoadConn> {
    let mut out = Vec::new();
    for c in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // After the kill the connect is refused: `Client::connect` panics then.
        let Ok(mut client) = std::panic::catch_unwind(|| Client::connect(addr)) else {
            break;
        };
        let mut lc = LoadConn {
            sent: Vec::new(),
            posts: Vec::new(),
            answered: 0,
            closed_at: None,
            error: None,
        };
        for p in 0..PAIRS_PER_CONN {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let tag = format!("t={t}&c={c}&p={p}");
            if !exchange(&mut client, &mut lc, &get(&format!("/small?{tag}"))) {
                break;
            }
            let body = format!("{{\"t\":{t},\"c\":{c},\"p\":{p}}}");
            let start = client.sent.len();
            let sent_at = Instant::now();
            if !exchange(
                &mut client,
                &mut lc,
                &post(&format!("/echo?{tag}"), body.as_bytes()),
            ) {
                break;
            }
            lc.posts.push((start..client.sent.len(), sent_at));
        }
        let open = lc.error.is_some() || stop.load(Ordering::Relaxed);
        if !open {
            client.shutdown_write();
            if client.closed_by_peer() {
                lc.closed_at = Some(Instant::now());
            } else {
                lc.fail("not closed after the half-close".into());
            }
        }
        lc.sent = std::mem::take(&mut client.sent);
        let failed = lc.error.is_some();
        out.push(lc);
        if failed {
            break;
        }
    }
    out
}

/// (7) The real binary with brokers down spools the records of several clients that keep
/// sending GETs and POSTs on keep-alive connections; it is killed with SIGKILL while they
/// do. Restarted with brokers up, it replays the spool: every POST answered before the kill
/// is in the topic (its record was fsynced before the POST was forwarded), each connection's
/// records are in order and gap-free, everything the spool held arrives exactly once, and the
/// only losses — the tails of the connections open at the kill — show as connections without
/// a final record, which `inspect` reports.
#[test]
fn sigkill_under_load_then_restart_replays_the_spool() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let _s = serial();
    let t0 = Instant::now();
    let k = start_kafka();
    k.all_down();
    let origin = Origin::start();
    let spool = tempfile::tempdir().unwrap();
    let mut first = start_binary(&k.bootstrap, &origin, spool.path());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..LOAD_THREADS)
        .map(|t| {
            let (addr, stop) = (first.addr, stop.clone());
            thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || load_thread(addr, t, &stop))
                .unwrap()
        })
        .collect();
    thread::sleep(LOAD_BEFORE_KILL);
    assert!(
        threads.iter().all(|t| !t.is_finished()),
        "a load thread ended before the kill"
    );
    let kill_at = Instant::now();
    first.signal(libc::SIGKILL);
    let st = first.wait_exit(EXIT_TIMEOUT);
    assert_eq!(st.code(), None, "killed by a signal");
    stop.store(true, Ordering::Relaxed);
    let conns: Vec<LoadConn> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    for lc in &conns {
        if let Some((at, e)) = &lc.error {
            assert!(*at >= kill_at, "a request failed before the kill: {e}");
        }
    }
    let answered_posts: usize = conns.iter().map(|c| c.posts.len()).sum();
    let answered: usize = conns.iter().map(|c| c.answered).sum();
    // When the last answered POST was sent: a connection closed before that has its final
    // record in the spool (the worker emitted it before that POST's record, the single sink
    // thread spools in order and fsynced both before the POST was forwarded).
    let last_post_sent = conns
        .iter()
        .flat_map(|c| c.posts.iter().map(|p| p.1))
        .max()
        .expect("some POST answered before the kill");
    assert!(
        answered_posts >= LOAD_THREADS,
        "{answered_posts} POSTs answered"
    );

    // What the spool holds: entries (key, number), and skipped (torn) bytes.
    let mut entries: Vec<(String, u32, bool)> = Vec::new();
    let mut skipped = 0usize;
    for (_, path) in segment_files(spool.path()).unwrap() {
        for s in scan_segment(&path).unwrap() {
            match s {
                Scanned::Entry {
                    key,
                    number,
                    is_final,
                    ..
                } => entries.push((key, number, is_final)),
                Scanned::Skipped { .. } => skipped += 1,
            }
        }
    }
    assert!(!entries.is_empty(), "nothing spooled");

    k.all_up();
    assert!(
        k.records().is_empty(),
        "brokers were down: nothing in Kafka"
    );
    let mut second = start_binary(&k.bootstrap, &origin, spool.path());
    let deadline = Instant::now() + KAFKA_WAIT;
    while second.metric("spoolBytes") != 0 || segments(spool.path()) != 0 {
        assert!(Instant::now() < deadline, "spool not drained");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        second.metric("spoolRecordsDrained_total"),
        entries.len() as u64
    );
    assert_eq!(second.metric("spoolCorruptSkipped_total"), skipped as u64);
    assert_eq!(second.metric("spoolRecordsDropped_total"), 0);
    let replayed = k.wait_records(&format!("{} replayed records", entries.len()), |g| {
        g.len() >= entries.len()
    });
    // Everything the spool held arrived, exactly once.
    assert_eq!(replayed.len(), entries.len(), "no duplicates");
    let have: BTreeSet<(String, u32)> = replayed
        .iter()
        .map(|g| (g.ts.connection_id.clone(), g.number() as u32))
        .collect();
    let want: BTreeSet<(String, u32)> = entries.iter().map(|e| (e.0.clone(), e.1)).collect();
    assert_eq!(have, want);

    // (d) The restarted proxy serves and captures normally.
    let mut fresh = Client::connect(second.addr);
    fresh.send(&get("/small?after=restart"));
    assert_eq!(fresh.read_response(false).status, 200);
    let took = timed_post(&mut fresh, "/echo?after=restart", b"{\"after\":1}");
    assert!(took < SPOOLED_POST_MAX, "{took:?}");
    finish_client(&mut fresh);
    let finals_before = replayed.iter().filter(|g| g.is_final()).count();
    let got = k.wait_finals(finals_before + 1);
    assert_placement_and_order(&got);
    let t = trace(&got);
    let fresh_conn = conn_of(&t, &fresh);
    fresh_conn.check();
    assert_exchange(&fresh_conn, &fresh);

    // (b) Per connection: numbers 1..k, contiguous, in offset order (got is in partition,
    // offset order; assert_placement_and_order keeps a connection on one partition).
    let captured: Vec<ConnTrace> = t
        .connections()
        .into_iter()
        .filter(|c| c.id != fresh_conn.id)
        .collect();
    let mut unfinished: BTreeSet<String> = BTreeSet::new();
    let mut matched = vec![false; conns.len()];
    for c in &captured {
        let numbers: Vec<i32> = c
            .indexes()
            .iter()
            .map(|i| match i {
                Index::Number(n) | Index::NumberOfThisLastChunk(n) => *n,
            })
            .collect();
        let want: Vec<i32> = (1..=numbers.len() as i32).collect();
        assert_eq!(numbers, want, "connection {}: gap or duplicate", c.id);
        let has_final = matches!(c.indexes().last(), Some(Index::NumberOfThisLastChunk(_)));
        if has_final {
            c.check();
        } else {
            unfinished.insert(c.id.clone());
        }
        // The client connection it captured: the one whose bytes start with its reads
        // (each connection's first request names it).
        let reads = c.reads();
        let who: Vec<usize> = conns
            .iter()
            .enumerate()
            .filter(|(_, lc)| !reads.is_empty() && lc.sent.starts_with(&reads))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(who.len(), 1, "connection {}:{}", c.id, c.dump());
        let i = who[0];
        assert!(!matched[i], "two captured connections for one client");
        matched[i] = true;
        let lc = &conns[i];
        let requests = c.request_reads();
        // (a) Every answered POST is in its connection's captured reads.
        for (range, _) in &lc.posts {
            let bytes = &lc.sent[range.clone()];
            assert!(
                reads.len() >= range.end && requests.iter().any(|r| r == bytes),
                "connection {}: answered POST {:?} missing from the capture{}",
                c.id,
                String::from_utf8_lossy(bytes),
                c.dump()
            );
        }
        if has_final {
            // Only a connection the client closed ends with a final record, and all of it.
            assert!(
                lc.closed_at.is_some(),
                "connection {} final w/o close",
                c.id
            );
            assert_eq!(reads, lc.sent, "connection {}", c.id);
        } else if let Some(closed) = lc.closed_at {
            // (c) A closed connection may lack its final record only when nothing later was
            // made durable: it was closed after the last answered POST was sent.
            assert!(
                closed > last_post_sent,
                "connection {} closed before a later POST was answered, but its final \
                 record is missing{}",
                c.id,
                c.dump()
            );
        }
    }
    // (a) A connection with an answered POST has records.
    for (lc, m) in conns.iter().zip(&matched) {
        assert!(
            *m || lc.posts.is_empty(),
            "a connection with {} answered POSTs has no records",
            lc.posts.len()
        );
    }
    // Open at the kill: not closed, or the half-close met the kill (EOF either way).
    let open_at_kill = conns
        .iter()
        .filter(|c| c.closed_at.is_none_or(|at| at > kill_at))
        .count();
    let closed_late = conns
        .iter()
        .filter(|c| c.closed_at.is_some_and(|at| at > last_post_sent))
        .count();

    // (c) `inspect` reports exactly the connections without a final record as incomplete,
    // and nothing else as an error.
    let (r, text) = k.inspect();
    assert_eq!(r.connections as usize, captured.len() + 1, "{text}");
    assert_eq!(
        r.incomplete_connections as usize,
        unfinished.len(),
        "{text}"
    );
    assert_eq!(
        r.complete_connections as usize,
        captured.len() + 1 - unfinished.len(),
        "{text}"
    );
    assert_eq!(r.errors as usize, unfinished.len(), "{text}");
    let reported: BTreeSet<String> = r
        .problems
        .iter()
        .filter(|p| {
            p.message
                .starts_with("incomplete connection: no final record")
        })
        .map(|p| p.connection_id.clone())
        .collect();
    assert_eq!(reported, unfinished, "{text}");
    assert_eq!(r.records as usize, got.len(), "{text}");
    eprintln!(
        "sigkill under load: {} connections ({open_at_kill} open at the kill, {closed_late} \
         closed after the last answered POST), {answered} requests answered ({answered_posts} \
         POSTs); spool held {} records ({skipped} torn/corrupt regions); {} connections \
         incomplete in the topic (reported by inspect), {} complete; {:?}",
        conns.len(),
        entries.len(),
        unfinished.len(),
        r.complete_connections,
        t0.elapsed()
    );
    second.stop_ok(EXIT_TIMEOUT);
}
