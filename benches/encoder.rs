//! Record encoder: observations per second for small reads/writes with markers, and MB/s for
//! large (segmented) reads.
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use capture_proxy::capture::builder::{CaptureSettings, FinishedRecord, RecordOut, StreamBuilder};
use capture_proxy::capture::encode::Timestamp;

struct Recycle {
    pool: Vec<Vec<u8>>,
}
impl RecordOut for Recycle {
    fn take_buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }
    fn emit(&mut self, mut rec: FinishedRecord) {
        rec.value.clear();
        self.pool.push(rec.value);
    }
}

fn bench(c: &mut Criterion) {
    let settings =
        Arc::new(CaptureSettings::new(Arc::from("5f0c0b8e-node"), 1024 * 1024 - 500).unwrap());
    let req = vec![b'r'; 180];
    let resp = vec![b'w'; 400];
    let mut g = c.benchmark_group("encoder");
    g.throughput(Throughput::Elements(1));
    g.bench_function("exchange_read_eom_write", |b| {
        let mut out = Recycle { pool: Vec::new() };
        let mut sb = StreamBuilder::new(Arc::from("conn-1"), settings.clone());
        let ts = Timestamp {
            secs: 1_700_000_000,
            nanos: 123_456_789,
        };
        b.iter(|| {
            sb.read(ts, &req, &mut out);
            sb.end_of_message(ts, 30, 120, &mut out);
            sb.write(ts, &resp, &mut out);
        })
    });
    let big = vec![b'x'; 1 << 20];
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("read_1mib_segmented", |b| {
        let mut out = Recycle { pool: Vec::new() };
        let mut sb = StreamBuilder::new(Arc::from("conn-2"), settings.clone());
        let ts = Timestamp {
            secs: 1_700_000_000,
            nanos: 1,
        };
        b.iter(|| sb.read(ts, &big, &mut out))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
