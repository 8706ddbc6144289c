//! Proves the data path allocates nothing per request in steady state: the request framer,
//! the response framer, the capture builder (records emitted into pooled buffers) and the
//! hand-off (batches to a consumer thread, acks and emptied buffers back) run keep-alive
//! traffic under a counting global allocator; after warm-up the count must not move.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capture_proxy::capture::builder::{CaptureSettings, FinishedRecord, RecordOut, StreamBuilder};
use capture_proxy::capture::encode::Timestamp;
use capture_proxy::handoff::{
    self, Ack, Batch, ConnRef, Inbox, Outcome, Record, Returned, SinkMsg,
};
use capture_proxy::http1::{
    Event, ExpectedResponse, FramerLimits, REvent, RequestFramer, ResponseFramer,
};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);
static OTHER_THREADS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static IS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        if IS_WORKER.with(|w| w.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        } else {
            OTHER_THREADS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The worker side of the pipeline: pooled buffers, a batch, the hand-off.
struct Pipeline {
    pool: Vec<Vec<u8>>,
    batch: Vec<Record>,
    spare_batches: Vec<Vec<Record>>,
    conn: ConnRef,
    key: Arc<str>,
}

impl RecordOut for Pipeline {
    fn take_buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }
    fn emit(&mut self, rec: FinishedRecord) {
        self.batch.push(Record {
            conn: self.conn,
            key: self.key.clone(),
            number: rec.number,
            is_final: rec.is_final,
            value: rec.value,
        });
    }
}

#[test]
fn keep_alive_traffic_allocates_nothing_per_request_in_steady_state() {
    let request = b"GET /_cluster/health HTTP/1.1\r\nhost: search.internal:9200\r\nuser-agent: bench\r\naccept: */*\r\n\r\n";
    let post = b"POST /logs/_doc HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n{\"message\":\"hello world!\"}\n";
    let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 51\r\n\r\n{\"cluster_name\":\"c\",\"status\":\"green\",\"nodes\":3000}\n";

    IS_WORKER.with(|w| w.set(true));
    let (tx, rx) = handoff::channel();
    let (inbox, _wake) = Inbox::new().unwrap();
    let sink_inbox = inbox.clone();
    // The consumer (sink) thread: acks every record and returns the buffers.
    let consumer = std::thread::spawn(move || {
        let mut acks: Vec<Ack> = Vec::with_capacity(4096);
        let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(4096);
        let mut records = 0u64;
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Some(SinkMsg::Batch(mut b)) => {
                    for mut r in b.records.drain(..) {
                        records += 1;
                        acks.push(Ack {
                            conn: r.conn,
                            number: r.number,
                            is_final: r.is_final,
                            outcome: Outcome::Committed,
                        });
                        r.value.clear();
                        bufs.push(r.value);
                    }
                    sink_inbox.deliver(&mut acks, &mut bufs, Some(b.records));
                }
                _ => return records,
            }
        }
    });

    let settings = Arc::new(CaptureSettings::new(Arc::from("node-0000"), 16 * 1024).unwrap());
    let key: Arc<str> = Arc::from("conn-0001");
    let mut builder = StreamBuilder::new(key.clone(), settings);
    // Set-up allocations, as a worker makes them: enough pooled record buffers (of the record
    // limit's size) and spare batch vectors for the most that can be in flight (64 records,
    // below), and pool vectors that never need to grow. Without this, a new high-water mark of
    // in-flight records reached only in the measured phase (a slow consumer thread on a busy
    // machine) allocated a few times, and the test was flaky.
    const IN_FLIGHT_SPARE: usize = 256;
    let mut p = Pipeline {
        pool: {
            let mut v = Vec::with_capacity(4 * IN_FLIGHT_SPARE);
            v.extend((0..IN_FLIGHT_SPARE).map(|_| Vec::with_capacity(17 * 1024)));
            v
        },
        batch: Vec::with_capacity(64),
        spare_batches: {
            let mut v = Vec::with_capacity(4 * IN_FLIGHT_SPARE);
            v.extend((0..IN_FLIGHT_SPARE).map(|_| Vec::with_capacity(64)));
            v
        },
        conn: ConnRef {
            worker: 0,
            slot: 0,
            generation: 0,
        },
        key,
    };
    let mut req_framer = RequestFramer::new(FramerLimits::default());
    let mut resp_framer = ResponseFramer::new(FramerLimits::default());
    let mut returned = Returned::default();
    returned.acks.reserve(4 * IN_FLIGHT_SPARE);
    returned.buffers.reserve(4 * IN_FLIGHT_SPARE);
    returned.record_vecs.reserve(4 * IN_FLIGHT_SPARE);
    let mut inflight = 0usize;

    let mut one_exchange =
        |i: usize, p: &mut Pipeline, returned: &mut Returned, inflight: &mut usize| {
            let ts = Timestamp {
                secs: 1_700_000_000 + i as i64,
                nanos: 1,
            };
            let req: &[u8] = if i % 4 == 0 { post } else { request };
            let mut pos = 0;
            let mut seg = 0;
            loop {
                let step = req_framer.advance(&req[pos..]).unwrap();
                pos += step.consumed;
                match step.event {
                    None => break,
                    Some(Event::HeadComplete(h)) => {
                        resp_framer.expect(ExpectedResponse {
                            id: i as u64,
                            method_head: false,
                            method_connect: false,
                        });
                        let _ = h.method.is_mutating();
                    }
                    Some(Event::MessageComplete {
                        first_line_len,
                        headers_len,
                    }) => {
                        builder.read(ts, &req[seg..pos], p);
                        builder.end_of_message(ts, first_line_len, headers_len, p);
                        seg = pos;
                        if i % 4 == 0 {
                            builder.flush(p);
                        }
                    }
                    Some(Event::Http2Preface) => unreachable!(),
                }
            }
            let mut rpos = 0;
            loop {
                let step = resp_framer.advance(&response[rpos..]).unwrap();
                rpos += step.consumed;
                match step.event {
                    None => break,
                    Some(REvent::MessageComplete { .. }) => {}
                    Some(_) => {}
                }
            }
            builder.write(ts, response, p);
            // Hand the batch over every 8 exchanges; take back acks and buffers.
            if i % 8 == 7 && !p.batch.is_empty() {
                let fresh = p.spare_batches.pop().unwrap_or_default();
                let records = std::mem::replace(&mut p.batch, fresh);
                *inflight += records.len();
                tx.try_send(Batch { worker: 0, records })
                    .map_err(|_| ())
                    .unwrap();
            }
            // Steady state means the sink keeps up: never more than a few batches in flight
            // (the proxy gets there through back-pressure).
            let mut have = inbox.take(returned);
            while *inflight > 64 && !have {
                std::thread::yield_now();
                have = inbox.take(returned);
            }
            while have {
                *inflight -= returned.acks.len();
                returned.acks.clear();
                p.pool.append(&mut returned.buffers);
                for v in returned.record_vecs.drain(..) {
                    p.spare_batches.push(v);
                }
                have = inbox.take(returned);
            }
        };

    // Warm-up: pools, vectors and the record buffers reach their working sizes.
    for i in 0..20_000 {
        one_exchange(i, &mut p, &mut returned, &mut inflight);
    }
    // Let the consumer catch up so the pools are full before counting.
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(5));
        while inbox.take(&mut returned) {
            inflight -= returned.acks.len();
            returned.acks.clear();
            p.pool.append(&mut returned.buffers);
            for v in returned.record_vecs.drain(..) {
                p.spare_batches.push(v);
            }
        }
        if inflight == 0 {
            break;
        }
    }
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    const MEASURED: usize = 20_000;
    for i in 20_000..20_000 + MEASURED {
        one_exchange(i, &mut p, &mut returned, &mut inflight);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);
    drop(tx);
    let records = consumer.join().unwrap();
    assert!(
        records > 100,
        "records flowed through the hand-off ({records})"
    );
    let other = OTHER_THREADS.load(Ordering::SeqCst);
    eprintln!("worker thread: {allocs} allocations; sink thread: {other}");
    assert_eq!(
        allocs, 0,
        "{allocs} heap allocations during {MEASURED} steady-state keep-alive exchanges"
    );
}
