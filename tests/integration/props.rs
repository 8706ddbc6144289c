//! Property tests of the fuzzed invariants (issue 7), run with the normal test suite.
//!
//! The invariants themselves live in `fuzz/src/lib.rs`, included here as a module so that the
//! cargo-fuzz targets and these tests check exactly the same properties; here proptest
//! generates structured cases (and shrinks them) where the fuzzer decodes its bytes:
//!
//! - request framer: any bytes, cut anywhere, frame as in one call (and never panic);
//! - `--setHeader` rewriter: output = the documented rewrite; accepted heads stay accepted;
//! - capture builder: records decode back to exactly the calls made, within the size limit;
//! - pipeline: valid request streams read in any pieces, framed and captured as `conn.rs`
//!   does, decode back to the stream with one end-of-message marker after each request.
//!
//! Also replays every saved fuzz reproducer under `fuzz/regressions/<target>/`.

#[path = "../../fuzz/src/lib.rs"]
mod invariants;

use capture_proxy::capture::encode::Timestamp;
use capture_proxy::config::SetHeader;
use capture_proxy::http1::FramerLimits;
use invariants::*;
use proptest::prelude::*;

fn limits() -> impl Strategy<Value = FramerLimits> {
    prop_oneof![
        2 => Just(FramerLimits::default()),
        1 => (1usize..512, 1usize..64, 1usize..256).prop_map(|(h, c, t)| FramerLimits {
            max_head_bytes: h,
            max_chunk_line_bytes: c,
            max_trailer_bytes: t,
            ..FramerLimits::default()
        }),
    ]
}

fn header_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "Host",
            "Connection",
            "Expect",
            "Upgrade",
            "User-Agent"
        ])
        .prop_map(|n| n.as_bytes().to_vec()),
        "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,8}".prop_map(String::into_bytes),
    ]
    .prop_filter("framing headers come from the body", |n| {
        !n.eq_ignore_ascii_case(b"content-length")
            && !n.eq_ignore_ascii_case(b"transfer-encoding")
            && !n.eq_ignore_ascii_case(b"trailer")
    })
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec!["close", "keep-alive", "Upgrade", "100-continue", "x"])
            .prop_map(|v| v.as_bytes().to_vec()),
        "([!-~]([ -~\t]{0,10}[!-~])?)?".prop_map(String::into_bytes),
    ]
}

fn gen_request() -> impl Strategy<Value = GenRequest> {
    let method = prop_oneof![
        prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE"
        ])
        .prop_map(|m| m.as_bytes().to_vec()),
        // Only the methods the sources serve: the framer refuses the others (501).
        Just(b"GET".to_vec()),
    ];
    let body = prop_oneof![
        Just(GenBody::None),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(GenBody::Length),
        (
            prop::collection::vec(1usize..300, 0..5),
            any::<bool>(),
            prop::collection::vec((header_name(), header_value()), 0..3),
        )
            .prop_map(|(sizes, ext, trailers)| GenBody::Chunked {
                sizes,
                ext,
                // No Host in trailers (refused, as the framing fields are).
                trailers: trailers
                    .into_iter()
                    .filter(|(n, _)| !n.eq_ignore_ascii_case(b"host"))
                    .collect()
            }),
    ];
    (
        method,
        "/[a-zA-Z0-9/?=&._~:@!$'()*+,;-]{0,24}",
        0u8..2,
        any::<bool>(),
        0usize..3,
        prop::collection::vec((header_name(), header_value()), 0..5),
        body,
    )
        .prop_map(
            |(method, target, version_minor, _crlf, _leading, headers, body)| GenRequest {
                method,
                target: target.into_bytes(),
                // HTTP/1.0 has no chunked framing: the framer refuses it (RFC 9112 §6.1).
                version_minor: if matches!(body, GenBody::Chunked { .. }) {
                    1
                } else {
                    version_minor
                },
                // CRLF only, no leading empty lines: the framer refuses the rest.
                crlf: true,
                leading: 0,
                // Every expectation but 100-continue is refused (417); one Host.
                headers: with_one_host(headers)
                    .into_iter()
                    .map(|(n, v)| {
                        if n.eq_ignore_ascii_case(b"expect") {
                            (n, b"100-continue".to_vec())
                        } else {
                            (n, v)
                        }
                    })
                    .collect(),
                body,
            },
        )
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    let secs = prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        any::<i64>(),
        1_700_000_000i64..1_700_100_000,
    ];
    let nanos = prop_oneof![3 => 0u32..1_000_000_000, 1 => any::<u32>()];
    (secs, nanos).prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        2 => prop::collection::vec(any::<u8>(), 0..1024),
        1 => prop::collection::vec(any::<u8>(), 0..6000),
    ]
}

fn builder_op() -> impl Strategy<Value = BuilderOp> {
    let len = prop_oneof![3 => 0u32..5000, 1 => any::<u32>()];
    prop_oneof![
        5 => data().prop_map(BuilderOp::Read),
        3 => data().prop_map(BuilderOp::Write),
        2 => (len.clone(), len).prop_map(|(a, b)| BuilderOp::EndOfMessage(a, b)),
        1 => Just(BuilderOp::RequestDropped),
        1 => ".{0,300}".prop_map(BuilderOp::Exception),
        2 => Just(BuilderOp::Flush),
        1 => Just(BuilderOp::Close),
    ]
}

fn builder_case() -> impl Strategy<Value = BuilderCase> {
    (
        0usize..=128,
        0usize..=32,
        prop_oneof![0usize..16, 0usize..600, 0usize..4000],
        any::<bool>(),
        prop::collection::vec((timestamp(), builder_op()), 0..40),
    )
        .prop_map(|(cid, node, extra, recycle, ops)| BuilderCase {
            connection_id: "c".repeat(cid),
            node_id: "n".repeat(node),
            extra,
            recycle,
            ops,
        })
}

fn pipeline_case() -> impl Strategy<Value = PipelineCase> {
    (
        prop::collection::vec(gen_request(), 1..6),
        prop_oneof![0usize..64, 0usize..2000, 0usize..70_000],
        prop::option::of(1usize..5000),
        prop::collection::vec(any::<usize>(), 0..12),
        prop::collection::vec(
            (
                any::<usize>(),
                prop_oneof![
                    Just(Between::Flush),
                    prop::collection::vec(any::<u8>(), 1..300).prop_map(Between::Write),
                ],
            ),
            0..4,
        ),
    )
        .prop_map(|(requests, extra, buffer, cuts, between)| PipelineCase {
            requests,
            extra,
            buffer,
            cuts,
            between,
        })
}

fn set_header() -> impl Strategy<Value = SetHeader> {
    let name = prop_oneof![
        4 => prop::sample::select(HEADER_NAME_POOL).prop_map(str::to_string),
        1 => "[ -~]{0,6}",
    ];
    let value = prop_oneof![4 => "[ -~]{0,12}", 1 => "[\\x00-\\x7f]{0,6}"];
    (name, value).prop_map(|(name, value)| SetHeader { name, value })
}

/// A head made of lines, mostly valid: request line, header lines (pool names, so they collide
/// with the set names), continuation lines, junk lines, mixed endings, the empty line, a tail.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let ending = prop_oneof![
        6 => Just(&b"\r\n"[..]),
        3 => Just(&b"\n"[..]),
        1 => Just(&b"\r\r\n"[..]),
    ];
    let line = prop_oneof![
        6 => (
            prop::sample::select(HEADER_NAME_POOL),
            prop::sample::select(vec![": ", ":", ":\t", " :"]),
            "[ -~]{0,12}",
        )
            .prop_map(|(n, s, v)| format!("{n}{s}{v}").into_bytes()),
        1 => Just(b" folded".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ];
    (
        prop::sample::select(vec![
            &b"GET / HTTP/1.1"[..],
            b"POST /a?b=c HTTP/1.0",
            b"PUT * HTTP/1.1",
            b"X /",
            b"",
        ]),
        ending.clone(),
        prop::collection::vec((line, ending.clone()), 0..8),
        ending,
        prop::collection::vec(any::<u8>(), 0..20),
    )
        .prop_map(|(first, nl, lines, end, tail)| {
            let mut h = first.to_vec();
            h.extend_from_slice(nl);
            for (l, e) in lines {
                h.extend_from_slice(&l);
                h.extend_from_slice(e);
            }
            h.extend_from_slice(end);
            h.extend_from_slice(&tail);
            h
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn framer_random_bytes_frame_as_one_call(
        limits in limits(),
        input in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        check_framer_splits(limits, &input, &cut_points(input.len(), &cuts));
    }

    #[test]
    fn framer_http_noise_frames_as_one_call(
        limits in limits(),
        parts in prop::collection::vec(prop::sample::select(vec![
            &b"GET / HTTP/1.1"[..], b"POST /x HTTP/1.0", b"\r\n", b"\n", b"\r", b" ",
            b"Content-Length: 3", b"Content-Length: 99999999999999999999",
            b"Transfer-Encoding: chunked", b"Host: a", b"0", b"5", b"ff", b";x=y", b"abc",
            b":", b"PRI * HTTP/2.0", b"\x00", b"\xff",
        ]), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let input = parts.concat();
        check_framer_splits(limits, &input, &cut_points(input.len(), &cuts));
    }

    #[test]
    fn framer_valid_streams_frame_as_one_call(
        requests in prop::collection::vec(gen_request(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut input = Vec::new();
        for r in &requests {
            r.render(&mut input);
        }
        check_framer_splits(FramerLimits::default(), &input, &cut_points(input.len(), &cuts));
        // Every byte, one call each.
        let every: Vec<usize> = (1..input.len()).collect();
        check_framer_splits(FramerLimits::default(), &input, &every);
    }

    #[test]
    fn rewriter_output_is_the_documented_rewrite(
        set in prop::collection::vec(set_header(), 0..4),
        head in head(),
    ) {
        check_rewrite(&set, &head);
    }

    #[test]
    fn rewriter_raw_bytes(
        set in prop::collection::vec(set_header(), 0..4),
        head in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        check_rewrite(&set, &head);
    }

    #[test]
    fn builder_records_decode_to_the_calls(case in builder_case()) {
        check_builder(&case);
    }

    #[test]
    fn pipeline_captures_the_stream_with_one_eom_per_request(case in pipeline_case()) {
        check_pipeline(&case);
    }

    /// The fuzz targets' own entry points (byte decoding included) on random bytes.
    #[test]
    fn fuzz_entry_points_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        fuzz_request_framer(&data);
        fuzz_head_rewriter(&data);
        fuzz_capture_builder(&data);
        fuzz_pipeline(&data);
    }
}

/// Every reproducer saved under `fuzz/regressions/<target>/` passes its target's check.
#[test]
fn fuzz_regressions_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        let target = dir.file_name().unwrap().to_str().unwrap().to_string();
        let check: fn(&[u8]) = match target.as_str() {
            "request_framer" => fuzz_request_framer,
            "head_rewriter" => fuzz_head_rewriter,
            "capture_builder" => fuzz_capture_builder,
            "pipeline" => fuzz_pipeline,
            other => panic!("unknown fuzz target directory {other}"),
        };
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&file).unwrap();
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "reproducer {} fails", file.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no reproducer found under {}", root.display());
}

// ---- Bugs found by fuzzing (issue 7), fixed in src/; each test replays the case.

/// Found by `request_framer` (reproducer: fuzz/regressions/request_framer/
/// split-head-431-instead-of-400): a request line with an invalid byte was `Malformed` (400)
/// in one call but `HeadTooLarge` (431) when the head arrived split and reached
/// `max_head_bytes` before its first LF. The verdict must not depend on the split.
#[test]
fn split_head_over_the_limit_is_still_malformed() {
    let limits = FramerLimits {
        max_head_bytes: 8,
        ..FramerLimits::default()
    };
    let input = b"GE\x01T / HTTP/1.1\r\n\r\n";
    let whole = frame_run(limits, input, &[]);
    let split = frame_run(limits, input, &[1]);
    assert!(matches!(
        whole.error,
        Some(capture_proxy::http1::FrameError::Malformed(_))
    ));
    assert_eq!(split.error, whole.error, "the error depends on the split");
}

/// Whether `HeadRewriter` either refuses `set` or rewrites `head` into a head the framer
/// accepts with the same body framing (so proxy and destination agree where requests end).
fn rewrite_keeps_framing(set: &[SetHeader], head: &[u8]) -> Result<(), String> {
    let Ok(mut rw) = capture_proxy::http1::HeadRewriter::new(set) else {
        return Ok(());
    };
    let before = framed_head(head).expect("test head is valid");
    let out = rw.rewrite(head).expect("test head is complete").to_vec();
    match framed_head(&out) {
        None => Err(format!(
            "rewritten head {:?} is malformed",
            String::from_utf8_lossy(&out)
        )),
        Some(after) if after.body != before.body => Err(format!(
            "body framing changed from {:?} to {:?} by {:?}",
            before.body,
            after.body,
            String::from_utf8_lossy(&out)
        )),
        Some(_) => Ok(()),
    }
}

fn set1(name: &str, value: &str) -> Vec<SetHeader> {
    vec![SetHeader {
        name: name.into(),
        value: value.into(),
    }]
}

/// Found by `head_rewriter` (reproducer: fuzz/regressions/head_rewriter/
/// set-header-content-length-empty): `--setHeader` accepted the framing headers
/// `Content-Length` and `Transfer-Encoding`, so the proxy framed a request by the client's head
/// while the destination framed it by the rewritten one. They are refused now.
#[test]
fn set_header_refuses_framing_headers() {
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let post = b"POST /i/_doc HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    let mut failures = Vec::new();
    for (set, head) in [
        (set1("Content-Length", ""), &get[..]),
        (set1("Content-Length", "5"), &get[..]),
        (set1("content-length", "0"), &post[..]),
        (set1("Transfer-Encoding", "chunked"), &post[..]),
    ] {
        assert!(
            capture_proxy::http1::HeadRewriter::new(&set).is_err(),
            "{set:?} accepted"
        );
        if let Err(e) = rewrite_keeps_framing(&set, head) {
            failures.push(format!("{set:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Found while writing `head_rewriter` (reproducer: fuzz/regressions/head_rewriter/
/// set-header-value-control-byte): `--setHeader` values were checked only for CR, LF and NUL,
/// so a value with another control byte made every rewritten head malformed. Refused now.
#[test]
fn set_header_refuses_control_bytes() {
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut failures = Vec::new();
    for value in ["a\x01b", "\x1b[0m", "x\x7f"] {
        assert!(capture_proxy::http1::HeadRewriter::new(&set1("X-A", value)).is_err());
        if let Err(e) = rewrite_keeps_framing(&set1("X-A", value), get) {
            failures.push(format!("{value:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
