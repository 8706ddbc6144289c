//! AWS Signature Version 4 primitives shared by the MSK IAM token signer (`msk_iam`, a
//! presigned URL) and the STS `AssumeRole` call (`aws_creds`, a request signed in its
//! `Authorization` header): the [`Credentials`] type, HMAC-SHA256 and the signing-key derivation, SigV4 URI encoding,
//! `x-amz-date` timestamps, and [`authorization_header`].
//!
//! May depend on: `super::date` (calendar arithmetic), `sha2`, `hmac`. No I/O.
//!
//! Invariant: pure functions of their inputs; checked against the worked examples of the AWS
//! SigV4 documentation.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::date::civil_from_days;

/// AWS credentials: what a SigV4 signature is made with. `Debug` never shows the secret or the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// When temporary credentials stop working (Unix seconds); `None` for long-term keys.
    pub expiration_epoch_secs: Option<i64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expiration_epoch_secs", &self.expiration_epoch_secs)
            .finish()
    }
}

pub(super) const SIGV4_ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// SHA-256 of an empty payload.
pub(super) const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[allow(clippy::expect_used)] // HMAC takes keys of any length: cannot fail.
pub(super) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC is defined for keys of any length (long keys are hashed), so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// SigV4 signing key: HMAC chain over date (`YYYYMMDD`), region, service and `aws4_request`.
pub(super) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut seed = Vec::with_capacity(4 + secret.len());
    seed.extend_from_slice(b"AWS4");
    seed.extend_from_slice(secret.as_bytes());
    let k_date = hmac_sha256(&seed, date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

pub(super) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

#[allow(clippy::indexing_slicing)] // a nibble (0..16) indexes the 16-entry table.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[allow(clippy::indexing_slicing)] // a nibble (0..16) indexes the 16-entry table.
fn push_percent(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(DIGITS[usize::from(b >> 4)]));
    out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
}

/// SigV4 URI encoding: everything but `A-Z a-z 0-9 - . _ ~` as `%XX` (uppercase) of its UTF-8.
pub(super) fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            push_percent(&mut out, b);
        }
    }
    out
}

/// `application/x-www-form-urlencoded` value encoding (Python's `quote_plus`), which the
/// reference signer applies to the unsigned `User-Agent` parameter: space becomes `+`.
pub(super) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            push_percent(&mut out, b);
        }
    }
    out
}

/// (`YYYYMMDD`, `YYYYMMDDTHHMMSSZ`) in UTC for a Unix time.
pub(super) fn amz_date_and_timestamp(epoch_secs: i64) -> (String, String) {
    let days = epoch_secs.div_euclid(86_400);
    let secs_of_day = epoch_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let date = format!("{y:04}{m:02}{d:02}");
    let timestamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    );
    (date, timestamp)
}

/// Who signs, for what, and when (the SigV4 credential scope and timestamp).
pub(super) struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub now_epoch_secs: i64,
}

/// A request to sign in its headers. `canonical_uri` and `canonical_query` are already in
/// canonical form; `headers` are the headers to sign (any case, any order; every one of them
/// must be sent as given).
pub(super) struct HeaderSignedRequest<'a> {
    pub method: &'a str,
    pub canonical_uri: &'a str,
    pub canonical_query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
}

/// The `Authorization` header value for `req` signed by `signer`:
/// `AWS4-HMAC-SHA256 Credential=<key id>/<scope>, SignedHeaders=<names>, Signature=<hex>`.
/// The caller also sends `x-amz-date` (and signs it: it must be among `req.headers`).
pub(super) fn authorization_header(signer: &Signer<'_>, req: &HeaderSignedRequest<'_>) -> String {
    let (date, timestamp) = amz_date_and_timestamp(signer.now_epoch_secs);
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.trim().to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort();
    let mut canonical_headers = String::new();
    let mut signed_headers = String::new();
    for (i, (name, value)) in headers.iter().enumerate() {
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(value);
        canonical_headers.push('\n');
        if i > 0 {
            signed_headers.push(';');
        }
        signed_headers.push_str(name);
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        req.canonical_uri,
        req.canonical_query,
        sha256_hex(req.payload)
    );
    let scope = format!("{date}/{}/{}/aws4_request", signer.region, signer.service);
    let string_to_sign = format!(
        "{SIGV4_ALGORITHM}\n{timestamp}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = signing_key(
        signer.secret_access_key,
        &date,
        signer.region,
        signer.service,
    );
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "{SIGV4_ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        signer.access_key_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS SigV4 documentation, "Examples of how to derive a signing key".
    #[test]
    fn signing_key_matches_aws_docs_example() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    /// AWS SigV4 documentation's worked example (IAM ListUsers, 2015-08-30T12:36:00Z):
    /// canonical request hash, signing key and signature.
    #[test]
    fn sigv4_worked_example_from_aws_docs() {
        let canonical_request = "GET\n/\nAction=ListUsers&Version=2010-05-08\n\
            content-type:application/x-www-form-urlencoded; charset=utf-8\n\
            host:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
            content-type;host;x-amz-date\n\
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cr_hash = sha256_hex(canonical_request.as_bytes());
        assert_eq!(
            cr_hash,
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let (date, ts) = amz_date_and_timestamp(1_440_938_160);
        assert_eq!(
            (date.as_str(), ts.as_str()),
            ("20150830", "20150830T123600Z")
        );
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            &date,
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let sts = format!("AWS4-HMAC-SHA256\n{ts}\n20150830/us-east-1/iam/aws4_request\n{cr_hash}");
        assert_eq!(
            hex(&hmac_sha256(&key, sts.as_bytes())),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert_eq!(sha256_hex(b""), EMPTY_PAYLOAD_SHA256);
    }

    #[test]
    fn uri_and_form_encoding() {
        assert_eq!(uri_encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(uri_encode("a/b+c=d e:f"), "a%2Fb%2Bc%3Dd%20e%3Af");
        assert_eq!(uri_encode("é"), "%C3%A9");
        assert_eq!(
            form_encode("ua/1.0 (x; y=1&z~)"),
            "ua%2F1.0+%28x%3B+y%3D1%26z~%29"
        );
    }

    #[test]
    fn amz_timestamps() {
        assert_eq!(amz_date_and_timestamp(0).1, "19700101T000000Z");
        assert_eq!(amz_date_and_timestamp(-1).1, "19691231T235959Z");
        assert_eq!(amz_date_and_timestamp(951_782_400).1, "20000229T000000Z");
        assert_eq!(amz_date_and_timestamp(1_709_251_199).1, "20240229T235959Z");
        assert_eq!(amz_date_and_timestamp(1_956_441_601).1, "20311231T000001Z");
    }

    // ---- Reference tokens -------------------------------------------------------------------
    //

    /// The same worked example through [`authorization_header`]: the documented signature.
    #[test]
    fn header_signing_matches_aws_docs_example() {
        let signer = Signer {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
            service: "iam",
            now_epoch_secs: 1_440_938_160,
        };
        let req = HeaderSignedRequest {
            method: "GET",
            canonical_uri: "/",
            canonical_query: "Action=ListUsers&Version=2010-05-08",
            headers: &[
                ("X-Amz-Date", "20150830T123600Z"),
                ("Host", "iam.amazonaws.com"),
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded;  charset=utf-8",
                ),
            ],
            payload: b"",
        };
        assert_eq!(
            authorization_header(&signer, &req),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }
}
