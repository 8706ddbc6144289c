//! The whole per-core pipeline without sockets: framer → capture builder → batch → hand-off
//! queue → a consumer thread that acks and returns buffers. Reports exchanges per second for
//! one core (records flow as they would from a worker).
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use capture_proxy::capture::builder::{CaptureSettings, FinishedRecord, RecordOut, StreamBuilder};
use capture_proxy::capture::encode::Timestamp;
use capture_proxy::handoff::{
    self, Ack, Batch, ConnRef, Inbox, Outcome, Record, Returned, SinkMsg,
};
use capture_proxy::http1::{Event, FramerLimits, RequestFramer};

struct Worker {
    pool: Vec<Vec<u8>>,
    batch: Vec<Record>,
    spare: Vec<Vec<Record>>,
    key: Arc<str>,
}
impl RecordOut for Worker {
    fn take_buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }
    fn emit(&mut self, rec: FinishedRecord) {
        self.batch.push(Record {
            conn: ConnRef {
                worker: 0,
                slot: 0,
                generation: 0,
            },
            key: self.key.clone(),
            number: rec.number,
            is_final: rec.is_final,
            value: rec.value,
        });
    }
}

fn bench(c: &mut Criterion) {
    let (tx, rx) = handoff::channel();
    let (inbox, _wake) = Inbox::new().unwrap();
    let sink_inbox = inbox.clone();
    let consumer = std::thread::spawn(move || {
        let (mut acks, mut bufs) = (Vec::new(), Vec::new());
        while let Some(SinkMsg::Batch(mut b)) = rx.recv_timeout(Duration::from_secs(30)) {
            for mut r in b.records.drain(..) {
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
    });
    // Small records (16 KiB) so records are emitted and cross the hand-off often.
    let settings = Arc::new(CaptureSettings::new(Arc::from("node"), 16 * 1024).unwrap());
    let request = b"GET /_search?q=x HTTP/1.1\r\nhost: search.internal:9200\r\naccept: */*\r\n\r\n";
    let response = vec![b'w'; 300];
    let mut w = Worker {
        pool: Vec::new(),
        batch: Vec::new(),
        spare: Vec::new(),
        key: Arc::from("conn"),
    };
    let mut sb = StreamBuilder::new(w.key.clone(), settings);
    let mut f = RequestFramer::new(FramerLimits::default());
    let mut returned = Returned::default();
    let mut n: u64 = 0;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_exchange_per_core", |b| {
        b.iter(|| {
            let ts = Timestamp::now();
            let mut pos = 0;
            loop {
                let step = f.advance(&request[pos..]).unwrap();
                pos += step.consumed;
                match step.event {
                    None => break,
                    Some(Event::MessageComplete {
                        first_line_len,
                        headers_len,
                    }) => {
                        sb.read(ts, request, &mut w);
                        sb.end_of_message(ts, first_line_len, headers_len, &mut w);
                    }
                    Some(_) => {}
                }
            }
            sb.write(ts, &response, &mut w);
            n += 1;
            if n % 32 == 0 && !w.batch.is_empty() {
                let fresh = w.spare.pop().unwrap_or_default();
                let records = std::mem::replace(&mut w.batch, fresh);
                let _ = tx.try_send(Batch { worker: 0, records });
            }
            while inbox.take(&mut returned) {
                returned.acks.clear();
                w.pool.append(&mut returned.buffers);
                w.spare.append(&mut returned.record_vecs);
            }
        })
    });
    g.finish();
    drop(tx);
    let _ = consumer.join();
}

criterion_group!(benches, bench);
criterion_main!(benches);
