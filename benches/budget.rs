//! The budget of capturing one MiB (issue 15): what the machine must spend at least, per MiB of
//! captured body, on each step a capture cannot avoid — so the proxy's measured cost per
//! captured MiB can be compared against it step by step.
//!
//! Steps, each on 1 MiB of `_bulk`-like NDJSON:
//! - `memcpy_hot`: copy into a reused buffer (the one copy a record built by value makes).
//! - `memcpy_fresh_pages`: the same copy into freshly mapped memory (page faults + zeroing:
//!   what a record buffer that is not reused costs).
//! - `base64`: SIMD base64 of the record (trace files), into a reused line buffer.
//! - `write_page_cache`: `write(2)` of the 1.33 MiB base64 line to a file (the page cache; the
//!   file is truncated every 64 MiB so fresh pages keep being allocated, as an appending sink's
//!   are).
//! - `write_direct_cpu`: the same line written with `O_DIRECT` (its whole 4 KiB blocks, from
//!   an aligned buffer, appended as the file sink writes lines of 1 MiB and more), timed in
//!   the thread's CPU time, not the wall clock: a direct write waits for the device, which
//!   costs time but not CPU. The file is in cargo's target directory (the disk, as a
//!   production capture directory).
//! - `loopback_send`: `write(2)` of 1 MiB to a 127.0.0.1 TCP socket whose reader (another
//!   thread) drains it (what handing a record to a local broker costs the sender).
//! - `lz4`: LZ4 block compression in safe Rust (`lz4_flex`): the algorithm, an upper bound.
//! - `lz4_librdkafka`: the C liblz4 that librdkafka bundles and that is linked into this
//!   binary (`LZ4F_compressFrame`, an LZ4 frame of 64 KiB blocks, as librdkafka writes
//!   `compression.type=lz4` batches): what the Kafka sink really pays per MiB.
//! - `lz4_librdkafka_loadtest_body`: the same on the body of `scripts/loadtest.sh`'s `bulk1m`
//!   (~10 000 near-identical NDJSON pairs that differ only in a counter), which compresses
//!   far better and faster than varied documents.
//!
//! Run: `cargo bench --bench budget`; README "Performance" has the latest figures.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
// Links librdkafka (a static library of rdkafka-sys), whose bundled liblz4 provides the
// LZ4F functions declared below.
use rdkafka as _;

/// liblz4's frame preferences (`LZ4F_preferences_t`, lz4frame.h), all zero = defaults: 64 KiB
/// blocks, linked blocks, no checksums, compression level 0 (fast). 56 bytes on every ABI
/// liblz4 supports; zeroed, so no field needs naming.
#[repr(C)]
struct Lz4fPreferences([u64; 7]);

extern "C" {
    fn LZ4F_compressFrameBound(src_size: usize, prefs: *const Lz4fPreferences) -> usize;
    fn LZ4F_compressFrame(
        dst: *mut u8,
        dst_capacity: usize,
        src: *const u8,
        src_size: usize,
        prefs: *const Lz4fPreferences,
    ) -> usize;
    fn LZ4F_isError(code: usize) -> u32;
}

/// One MiB: the body size of the loadtest's `bulk1m` scenario.
const MIB: usize = 1 << 20;
/// Truncate the page-cache file after this many bytes (64 MiB: well above the CPU caches,
/// small enough to stay out of writeback pressure).
const FILE_WRAP_BYTES: u64 = 64 << 20;

/// `_bulk`-like NDJSON: an action line and a ~200-byte document, repeated.
fn bulk_mib() -> Vec<u8> {
    let mut out = Vec::with_capacity(MIB);
    let mut i = 0u64;
    while out.len() < MIB {
        let line = format!(
            "{{\"index\":{{\"_index\":\"logs-2026.12.07\",\"_id\":\"{i}\"}}}}\n{{\"@timestamp\":\"2026-12-07T03:{:02}:{:02}Z\",\"level\":\"info\",\"service\":\"checkout\",\"trace\":\"{:016x}\",\"message\":\"order {i} placed with {} items\"}}\n",
            i % 60,
            (i * 7) % 60,
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            i % 13
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(MIB);
    out
}

/// `scripts/loadtest.sh`'s `bulk1m` body, built the same way: action + document pairs while
/// they fit in 1 MiB less 200 bytes, then one document whose string fills the MiB with `y`.
fn loadtest_bulk_mib() -> Vec<u8> {
    let action = "{\"index\":{\"_index\":\"logs\"}}\n";
    let mut out = Vec::with_capacity(MIB);
    for i in 0.. {
        let item = format!(
            "{action}{{\"@timestamp\":\"2026-11-25T12:00:00Z\",\"message\":\"request {i} from client\",\"status\":200}}\n"
        );
        if out.len() + item.len() + 200 > MIB {
            break;
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.extend_from_slice(action.as_bytes());
    out.extend_from_slice(b"{\"m\":\"");
    out.resize(MIB - 3, b'y');
    out.extend_from_slice(b"\"}\n");
    out
}

/// One LZ4 frame of `src` (at most MIB bytes) into `frame`, sized by `LZ4F_compressFrameBound`
/// for MIB bytes with `prefs`; returns the frame's length.
fn lz4f_frame(src: &[u8], frame: &mut [u8], prefs: &Lz4fPreferences) -> usize {
    assert!(
        src.len() <= MIB,
        "the frame buffer is bounded for MIB bytes of input"
    );
    // SAFETY: `frame` holds the frame bound for MIB bytes of input and `src` is at most that;
    // both slices stay valid for the call; prefs is a valid LZ4F_preferences_t.
    let n = unsafe {
        LZ4F_compressFrame(
            frame.as_mut_ptr(),
            frame.len(),
            src.as_ptr(),
            src.len(),
            prefs,
        )
    };
    // SAFETY: LZ4F_isError only inspects the code.
    assert_eq!(unsafe { LZ4F_isError(n) }, 0, "LZ4F_compressFrame failed");
    n
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn bench(c: &mut Criterion) {
    let body = bulk_mib();
    let mut g = c.benchmark_group("budget_per_mib");
    g.throughput(Throughput::Bytes(MIB as u64));

    g.bench_function("memcpy_hot", |b| {
        let mut dst = Vec::with_capacity(MIB);
        b.iter(|| {
            dst.clear();
            dst.extend_from_slice(std::hint::black_box(&body));
            std::hint::black_box(&dst);
        })
    });

    g.bench_function("memcpy_fresh_pages", |b| {
        b.iter(|| {
            // SAFETY: an anonymous private mapping of MIB bytes, written within its length and
            // unmapped before the next iteration; no reference outlives it.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    MIB,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                std::ptr::copy_nonoverlapping(body.as_ptr(), p.cast::<u8>(), MIB);
                std::hint::black_box(p);
                libc::munmap(p, MIB);
            }
        })
    });

    let b64_len = base64_simd::STANDARD.encoded_length(MIB);
    let mut line = vec![0u8; b64_len + 1];
    g.bench_function("base64", |b| {
        b.iter(|| {
            let out = base64_simd::Out::from_slice(&mut line[..b64_len]);
            std::hint::black_box(base64_simd::STANDARD.encode(&body, out));
        })
    });
    let encoded_line = {
        let mut l = base64_simd::STANDARD.encode_to_string(&body).into_bytes();
        l.push(b'\n');
        l
    };

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(dir.path().join("budget.log"))
        .expect("open");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("write_page_cache", |b| {
        let mut off = 0u64;
        b.iter(|| {
            if off >= FILE_WRAP_BYTES {
                file.set_len(0).expect("truncate");
                off = 0;
            }
            file.write_all_at(&encoded_line, off).expect("write");
            off += encoded_line.len() as u64;
        })
    });

    let direct = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.path().join("budget-direct.log"))
        .expect("open O_DIRECT");
    let blocks = encoded_line.len() / 4096 * 4096;
    let mut aligned_raw = vec![0u8; blocks + 4096];
    let start = aligned_raw.as_ptr().align_offset(4096);
    let aligned = &mut aligned_raw[start..start + blocks];
    aligned.copy_from_slice(&encoded_line[..blocks]);
    g.bench_function("write_direct_cpu", |b| {
        b.iter_custom(|iters| {
            let mut off = 0u64;
            let t0 = thread_cpu_time();
            for _ in 0..iters {
                if off >= FILE_WRAP_BYTES {
                    direct.set_len(0).expect("truncate");
                    off = 0;
                }
                direct.write_all_at(aligned, off).expect("direct write");
                off += blocks as u64;
            }
            thread_cpu_time().saturating_sub(t0)
        })
    });

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut tx = TcpStream::connect(addr).expect("connect");
    tx.set_nodelay(true).expect("nodelay");
    g.bench_function("loopback_send", |b| {
        b.iter(|| tx.write_all(&body).expect("send"))
    });
    drop(tx);
    reader.join().expect("reader");

    let mut compressed = vec![0u8; lz4_flex::block::get_maximum_output_size(MIB)];
    g.bench_function("lz4", |b| {
        b.iter(|| {
            std::hint::black_box(
                lz4_flex::block::compress_into(&body, &mut compressed).expect("lz4"),
            )
        })
    });

    let loadtest_body = loadtest_bulk_mib();
    let prefs = Lz4fPreferences([0; 7]);
    // SAFETY: prefs is a zeroed LZ4F_preferences_t (valid defaults); the bound only reads it.
    let bound = unsafe { LZ4F_compressFrameBound(MIB, &prefs) };
    let mut frame = vec![0u8; bound];
    for (name, src) in [
        ("lz4_librdkafka", &body),
        ("lz4_librdkafka_loadtest_body", &loadtest_body),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| std::hint::black_box(lz4f_frame(src, &mut frame, &prefs)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
