//! Request framer throughput: a small GET, a 16 KiB Content-Length body, and 64 × 1 KiB chunks.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use capture_proxy::http1::{Event, FramerLimits, RequestFramer};

fn frame_all(f: &mut RequestFramer, input: &[u8]) -> usize {
    let mut pos = 0;
    let mut done = 0;
    loop {
        let step = f.advance(&input[pos..]).expect("valid request");
        pos += step.consumed;
        match step.event {
            None => break,
            Some(Event::MessageComplete { .. }) => done += 1,
            Some(_) => {}
        }
    }
    done
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let get = b"GET /_cluster/health?pretty HTTP/1.1\r\nhost: search.internal:9200\r\nuser-agent: opensearch-java/2.8\r\naccept: application/json\r\n\r\n".to_vec();
    let mut cl = b"POST /logs/_bulk HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ncontent-length: 16384\r\n\r\n".to_vec();
    cl.extend(std::iter::repeat_n(b'a', 16384));
    let mut chunked =
        b"POST /logs/_bulk HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..64 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend(std::iter::repeat_n(b'b', 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    vec![
        ("small_get", get),
        ("content_length_16k", cl),
        ("chunked_64x1k", chunked),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_framer");
    for (name, input) in inputs() {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            let mut f = RequestFramer::new(FramerLimits::default());
            b.iter(|| frame_all(&mut f, input))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
