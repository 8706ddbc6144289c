//! Amazon MSK IAM authentication for the Kafka clients (the producer and `inspect`'s
//! consumer), carried over SASL/OAUTHBEARER.
//!
//! librdkafka has no `AWS_MSK_IAM` mechanism, so (like Amazon's MSK IAM SASL signer
//! libraries) we hand librdkafka an OAUTHBEARER token that is the base64url (unpadded) encoding
//! of a SigV4-presigned `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect&...`
//! URL (service `kafka-cluster`, `X-Amz-Expires=900`, plus an unsigned `User-Agent` parameter).
//! This module owns: the SigV4 presigning, the AWS credential chain (environment variables,
//! then the EC2 instance role through IMDSv2), region discovery, and the tiny blocking HTTP/1.1
//! client used to talk to the instance metadata service.
//!
//! May depend on: `super::date` (calendar arithmetic), std (blocking `TcpStream` I/O),
//! `sha2`, `hmac`, `base64`, `serde_json`, `thiserror`, `tracing`. No async runtime: it runs
//! on the thread that polls the client (librdkafka's token refresh callback: the sink thread,
//! or `inspect`'s), never on a worker.
//!
//! Invariants: for the same inputs a token is byte-identical to the one Amazon's reference
//! signer (`aws-msk-iam-sasl-signer-python`) produces; the only network peer is the configured
//! metadata endpoint, and every request to it is bounded by short timeouts and a response
//! size cap; secrets never appear in `Debug` output or logs; malformed metadata responses give
//! errors, never panics.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::date::{civil_from_days, format_iso8601, parse_iso8601};

/// SigV4 service name MSK IAM access control expects in the credential scope.
const SIGNING_SERVICE: &str = "kafka-cluster";
/// The one action the token authorises: connecting to the cluster.
const CONNECT_ACTION: &str = "kafka-cluster:Connect";
const SIGV4_ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// SHA-256 of the empty GET body, the payload hash botocore uses for this presigned URL.
const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Validity of the presigned URL in seconds (`X-Amz-Expires`). 900 s (15 min) is the value
/// all of Amazon's MSK IAM signers use; librdkafka refreshes the token well before that.
pub const TOKEN_EXPIRY_SECS: i64 = 900;

/// OAUTHBEARER principal name reported to librdkafka. It is not sent to the broker (MSK
/// derives the principal from the signature); Amazon's Java `aws-msk-iam-auth` reports the
/// signing service name (`IAMOAuthBearerToken::principalName`), and so do we.
pub const PRINCIPAL_NAME: &str = "kafka-cluster";

/// `User-Agent` query parameter appended (unsigned) to the presigned URL, and the HTTP
/// `User-Agent` sent to the metadata service.
pub const USER_AGENT: &str = concat!("capture-proxy/", env!("CARGO_PKG_VERSION"));

/// Cached credentials are refreshed this many seconds before they expire: 300 s (5 min) is
/// the margin the AWS SDKs use, and leaves every token we sign at least 5 minutes of life.
const CREDENTIAL_REFRESH_MARGIN_SECS: i64 = 300;

/// Metadata endpoint used when `AWS_EC2_METADATA_SERVICE_ENDPOINT` is not set.
const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// TCP connect timeout per metadata request: 1 s. The service is link-local and answers in
/// milliseconds; off EC2 nothing answers and we must fail fast.
const IMDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Budget for sending a request and reading its whole response once connected: 1 s (as for
/// connect). Applied as a deadline, so a server dribbling bytes cannot stretch it.
const IMDS_IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Lifetime asked for the IMDSv2 session token, in seconds (`X-aws-ec2-metadata-token-ttl-seconds`):
/// 21600 s (6 h), the maximum and the SDKs' default. We fetch a new one per refresh anyway.
const IMDS_SESSION_TTL_SECS: &str = "21600";
/// Largest metadata response accepted, in bytes: 64 KiB. Real responses (a credentials JSON
/// document with a ~1 KiB session token) are a few KiB at most.
const IMDS_MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Read granularity of the metadata client, in bytes.
const IMDS_READ_CHUNK_BYTES: usize = 4096;
/// Longest region name accepted, in bytes (real ones are under 20; the cap bounds the host).
const MAX_REGION_LEN: usize = 64;

const IMDS_TOKEN_PATH: &str = "/latest/api/token";
const IMDS_ROLES_PATH: &str = "/latest/meta-data/iam/security-credentials/";
const IMDS_REGION_PATH: &str = "/latest/meta-data/placement/region";

/// Errors of this module (credential and region lookup, configuration).
#[derive(Debug, thiserror::Error)]
pub enum MskIamError {
    #[error("incomplete AWS credentials in the environment: {0}")]
    PartialEnvCredentials(&'static str),
    #[error(
        "no AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set and the EC2 \
         instance metadata service is disabled (AWS_EC2_METADATA_DISABLED=true)"
    )]
    NoCredentialsImdsDisabled,
    #[error(
        "no AWS region: none configured, AWS_REGION/AWS_DEFAULT_REGION are not set and the EC2 \
         instance metadata service is disabled (AWS_EC2_METADATA_DISABLED=true)"
    )]
    NoRegionImdsDisabled,
    #[error(
        "invalid AWS region {0:?}: expected lowercase letters, digits and '-' (e.g. us-east-1)"
    )]
    InvalidRegion(String),
    #[error("invalid AWS_EC2_METADATA_SERVICE_ENDPOINT {value:?}: {reason}")]
    InvalidImdsEndpoint { value: String, reason: &'static str },
    #[error("EC2 instance metadata service at {endpoint} ({what}): {source}")]
    Imds {
        endpoint: String,
        what: &'static str,
        #[source]
        source: ImdsError,
    },
}

/// Failures talking to the instance metadata service.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("cannot resolve the endpoint address: {0}")]
    Resolve(std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("HTTP status {status} for {method} {path}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
    },
    #[error("malformed HTTP response: {0}")]
    BadHttp(&'static str),
    #[error("no IAM role is attached to this instance")]
    NoRole,
    #[error("unusable IAM role name {0:?}")]
    BadRoleName(String),
    #[error("unusable response: {0}")]
    BadResponse(String),
}

/// AWS credentials used to sign tokens. `Debug` never shows the secret or the session token.
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

// ---------------------------------------------------------------------------------------------
// Token generation (deterministic core)
// ---------------------------------------------------------------------------------------------

/// The MSK IAM OAUTHBEARER token for `creds`, signed at `now_epoch_secs`: base64url (no
/// padding) of the SigV4-presigned `kafka-cluster:Connect` URL. Byte-identical to Amazon's
/// reference signer for the same inputs. Valid for [`TOKEN_EXPIRY_SECS`] from `now_epoch_secs`.
pub fn generate_token(
    region: &str,
    creds: &Credentials,
    now_epoch_secs: i64,
    user_agent: &str,
) -> String {
    URL_SAFE_NO_PAD.encode(presigned_url(region, creds, now_epoch_secs, user_agent))
}

/// The presigned URL itself (what the token encodes). Mirrors botocore's `SigV4QueryAuth`:
/// operation parameter first, then the auth parameters in a fixed order, the signature, and
/// last the unsigned, form-encoded `User-Agent`.
fn presigned_url(
    region: &str,
    creds: &Credentials,
    now_epoch_secs: i64,
    user_agent: &str,
) -> String {
    let (date, timestamp) = amz_date_and_timestamp(now_epoch_secs);
    let host = format!("kafka.{region}.amazonaws.com");
    let scope = format!("{date}/{region}/{SIGNING_SERVICE}/aws4_request");
    let credential = format!("{}/{scope}", creds.access_key_id);
    let expires = TOKEN_EXPIRY_SECS.to_string();

    let mut params: Vec<(&str, &str)> = vec![
        ("Action", CONNECT_ACTION),
        ("X-Amz-Algorithm", SIGV4_ALGORITHM),
        ("X-Amz-Credential", &credential),
        ("X-Amz-Date", &timestamp),
        ("X-Amz-Expires", &expires),
        ("X-Amz-SignedHeaders", "host"),
    ];
    if let Some(token) = creds.session_token.as_deref() {
        params.push(("X-Amz-Security-Token", token));
    }
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    let url_query = join_query(&encoded);
    // The canonical query string sorts the encoded pairs by name, then value.
    encoded.sort();
    let canonical_query = join_query(&encoded);

    let canonical_request =
        format!("GET\n/\n{canonical_query}\nhost:{host}\n\nhost\n{EMPTY_PAYLOAD_SHA256}");
    let string_to_sign = format!(
        "{SIGV4_ALGORITHM}\n{timestamp}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = signing_key(&creds.secret_access_key, &date, region, SIGNING_SERVICE);
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));

    format!(
        "https://{host}/?{url_query}&X-Amz-Signature={signature}&User-Agent={}",
        form_encode(user_agent)
    )
}

fn join_query(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Token lifetime for librdkafka, as absolute Unix milliseconds: the presigned URL's expiry,
/// capped by the credentials' own expiry.
fn token_lifetime_ms(now_epoch_secs: i64, creds_expiration: Option<i64>) -> i64 {
    let url_expiry = now_epoch_secs.saturating_add(TOKEN_EXPIRY_SECS);
    let expiry = match creds_expiration {
        Some(exp) => url_expiry.min(exp),
        None => url_expiry,
    };
    expiry.saturating_mul(1000)
}

// ---------------------------------------------------------------------------------------------
// SigV4 primitives
// ---------------------------------------------------------------------------------------------

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC is defined for keys of any length (long keys are hashed), so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// SigV4 signing key: HMAC chain over date (`YYYYMMDD`), region, service and `aws4_request`.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut seed = Vec::with_capacity(4 + secret.len());
    seed.extend_from_slice(b"AWS4");
    seed.extend_from_slice(secret.as_bytes());
    let k_date = hmac_sha256(&seed, date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn push_percent(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(DIGITS[usize::from(b >> 4)]));
    out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
}

/// SigV4 URI encoding: everything but `A-Z a-z 0-9 - . _ ~` as `%XX` (uppercase) of its UTF-8.
fn uri_encode(s: &str) -> String {
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
fn form_encode(s: &str) -> String {
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
fn amz_date_and_timestamp(epoch_secs: i64) -> (String, String) {
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

fn now_epoch_secs() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Credential chain
// ---------------------------------------------------------------------------------------------

enum EnvCredentials {
    Absent,
    Complete(Credentials),
    Partial(&'static str),
}

enum ImdsSetting {
    Disabled,
    Enabled(ImdsEndpoint),
    Invalid { value: String, reason: &'static str },
}

/// A parsed `http://host[:port]` metadata endpoint.
#[derive(Debug, Clone)]
struct ImdsEndpoint {
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    /// `host:port` (port defaulted to 80) for `ToSocketAddrs`.
    connect_to: String,
    /// The configured URL, for messages.
    display: String,
}

impl ImdsEndpoint {
    fn parse(value: &str) -> Result<Self, &'static str> {
        let v = value.trim();
        let rest = match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => v.get(7..).unwrap_or(""),
            _ => return Err("only http://host[:port] endpoints are supported"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
            None => (rest, ""),
        };
        if !path.is_empty() && path != "/" {
            return Err("a path after host[:port] is not supported");
        }
        if authority.is_empty() {
            return Err("missing host");
        }
        if !authority.bytes().all(|c| c.is_ascii_graphic()) || authority.contains('@') {
            return Err("host contains characters that are not allowed");
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let close = bracketed.find(']').ok_or("unterminated '[' in IPv6 host")?;
            let inner = bracketed.get(..close).unwrap_or("");
            let after = bracketed.get(close + 1..).unwrap_or("");
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("junk after ']'")?),
            };
            if inner.is_empty() {
                return Err("missing host");
            }
            (format!("[{inner}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
            return Err("malformed host");
        }
        let port: u16 = match port {
            None => 80,
            Some(p) => p.parse().map_err(|_| "invalid port")?,
        };
        Ok(Self {
            authority: authority.to_string(),
            connect_to: format!("{host}:{port}"),
            display: v.trim_end_matches('/').to_string(),
        })
    }
}

/// Where AWS credentials come from, in the standard order: the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the EC2 instance
/// role through IMDSv2. Instance-role credentials are cached and refreshed
/// [`CREDENTIAL_REFRESH_MARGIN_SECS`] before they expire. Also knows the region from
/// `AWS_REGION` / `AWS_DEFAULT_REGION` or the metadata service.
pub struct CredentialChain {
    env_credentials: EnvCredentials,
    env_region: Option<String>,
    imds: ImdsSetting,
    cache: Mutex<Option<Credentials>>,
}

impl fmt::Debug for CredentialChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = match &self.env_credentials {
            EnvCredentials::Absent => "absent",
            EnvCredentials::Complete(_) => "set",
            EnvCredentials::Partial(_) => "incomplete",
        };
        let imds = match &self.imds {
            ImdsSetting::Disabled => "disabled".to_string(),
            ImdsSetting::Enabled(ep) => ep.display.clone(),
            ImdsSetting::Invalid { value, .. } => format!("invalid {value:?}"),
        };
        f.debug_struct("CredentialChain")
            .field("env_credentials", &env)
            .field("env_region", &self.env_region)
            .field("imds", &imds)
            .finish()
    }
}

impl CredentialChain {
    /// Reads the configuration through `env` (a variable lookup, e.g. `std::env::var(k).ok()`).
    /// Empty values count as unset. Nothing is fetched until [`Self::credentials`].
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides the metadata endpoint (default
    /// `http://169.254.169.254`); `AWS_EC2_METADATA_DISABLED=true` turns the service off.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let env_credentials = match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                EnvCredentials::Complete(Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: get("AWS_SESSION_TOKEN"),
                    expiration_epoch_secs: None,
                })
            }
            (Some(_), None) => {
                EnvCredentials::Partial("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            }
            (None, Some(_)) => {
                EnvCredentials::Partial("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")
            }
            (None, None) => EnvCredentials::Absent,
        };
        let disabled =
            get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let imds = if disabled {
            ImdsSetting::Disabled
        } else {
            let value = get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_string());
            match ImdsEndpoint::parse(&value) {
                Ok(ep) => ImdsSetting::Enabled(ep),
                Err(reason) => ImdsSetting::Invalid { value, reason },
            }
        };
        Self {
            env_credentials,
            env_region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            imds,
            cache: Mutex::new(None),
        }
    }

    /// [`Self::from_env`] over the process environment.
    pub fn from_process_env() -> Self {
        Self::from_env(&|name| std::env::var(name).ok())
    }

    /// Current credentials: the environment's if set, else the instance role's (cached;
    /// refetched when within the refresh margin of expiry — if that refetch fails while the
    /// cached ones are still valid, the cached ones are returned and a warning logged).
    /// Blocks on the metadata service for at most a few seconds.
    pub fn credentials(&self) -> Result<Credentials, MskIamError> {
        self.credentials_at(now_epoch_secs())
    }

    fn credentials_at(&self, now: i64) -> Result<Credentials, MskIamError> {
        match &self.env_credentials {
            EnvCredentials::Complete(c) => return Ok(c.clone()),
            EnvCredentials::Partial(msg) => return Err(MskIamError::PartialEnvCredentials(msg)),
            EnvCredentials::Absent => {}
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref() {
            let fresh = c
                .expiration_epoch_secs
                .is_none_or(|exp| now < exp.saturating_sub(CREDENTIAL_REFRESH_MARGIN_SECS));
            if fresh {
                return Ok(c.clone());
            }
        }
        let endpoint = self.imds_endpoint(MskIamError::NoCredentialsImdsDisabled)?;
        match fetch_instance_credentials(endpoint, now) {
            Ok(c) => {
                tracing::info!(
                    access_key_id = %c.access_key_id,
                    expires = %c.expiration_epoch_secs.map(format_iso8601).unwrap_or_default(),
                    "fetched EC2 instance role credentials for MSK IAM"
                );
                *cache = Some(c.clone());
                Ok(c)
            }
            Err(source) => {
                let err = MskIamError::Imds {
                    endpoint: endpoint.display.clone(),
                    what: "fetching instance role credentials",
                    source,
                };
                match cache.as_ref() {
                    Some(c) if c.expiration_epoch_secs.is_none_or(|exp| now < exp) => {
                        tracing::warn!(error = %err, "credential refresh failed; using cached credentials until they expire");
                        Ok(c.clone())
                    }
                    _ => Err(err),
                }
            }
        }
    }

    /// The region from `AWS_REGION` / `AWS_DEFAULT_REGION`, else from the metadata service.
    pub fn region(&self) -> Result<String, MskIamError> {
        if let Some(r) = &self.env_region {
            return Ok(r.clone());
        }
        let endpoint = self.imds_endpoint(MskIamError::NoRegionImdsDisabled)?;
        fetch_region(endpoint).map_err(|source| MskIamError::Imds {
            endpoint: endpoint.display.clone(),
            what: "fetching the region",
            source,
        })
    }

    fn imds_endpoint(&self, if_disabled: MskIamError) -> Result<&ImdsEndpoint, MskIamError> {
        match &self.imds {
            ImdsSetting::Enabled(ep) => Ok(ep),
            ImdsSetting::Disabled => Err(if_disabled),
            ImdsSetting::Invalid { value, reason } => Err(MskIamError::InvalidImdsEndpoint {
                value: value.clone(),
                reason,
            }),
        }
    }
}

/// IMDSv2 session token, then the role name, then that role's credentials.
fn fetch_instance_credentials(ep: &ImdsEndpoint, now: i64) -> Result<Credentials, ImdsError> {
    let session = imds_session_token(ep)?;
    let auth = [("X-aws-ec2-metadata-token", session.as_str())];
    let roles = match http_call(ep, "GET", IMDS_ROLES_PATH, &auth) {
        Err(ImdsError::Status { status: 404, .. }) => return Err(ImdsError::NoRole),
        other => other?,
    };
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or(ImdsError::NoRole)?;
    // IAM role names are [A-Za-z0-9+=,.@_-]; anything else would corrupt the request line.
    if !role
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        return Err(ImdsError::BadRoleName(role.chars().take(128).collect()));
    }
    let body = http_call(ep, "GET", &format!("{IMDS_ROLES_PATH}{role}"), &auth)?;
    parse_credentials_document(&body, now)
}

fn parse_credentials_document(body: &str, now: i64) -> Result<Credentials, ImdsError> {
    let bad = |m: &str| ImdsError::BadResponse(m.to_string());
    let doc: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| ImdsError::BadResponse(format!("credentials are not JSON: {e}")))?;
    let field = |name: &str| {
        doc.get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(code) = field("Code") {
        if code != "Success" {
            return Err(ImdsError::BadResponse(format!(
                "credentials Code is {:?}",
                code.chars().take(64).collect::<String>()
            )));
        }
    }
    let access_key_id = field("AccessKeyId").ok_or_else(|| bad("no AccessKeyId"))?;
    let secret_access_key = field("SecretAccessKey").ok_or_else(|| bad("no SecretAccessKey"))?;
    let expiration = match field("Expiration") {
        Some(s) => Some(parse_iso8601(s).ok_or_else(|| bad("unparsable Expiration"))?),
        None => None,
    };
    if let Some(exp) = expiration {
        if exp <= now {
            return Err(ImdsError::BadResponse(format!(
                "credentials already expired at {}",
                format_iso8601(exp)
            )));
        }
    }
    Ok(Credentials {
        access_key_id: access_key_id.to_string(),
        secret_access_key: secret_access_key.to_string(),
        session_token: field("Token").map(str::to_string),
        expiration_epoch_secs: expiration,
    })
}

fn fetch_region(ep: &ImdsEndpoint) -> Result<String, ImdsError> {
    let session = imds_session_token(ep)?;
    let body = http_call(
        ep,
        "GET",
        IMDS_REGION_PATH,
        &[("X-aws-ec2-metadata-token", session.as_str())],
    )?;
    Ok(body.trim().to_string())
}

fn imds_session_token(ep: &ImdsEndpoint) -> Result<String, ImdsError> {
    let body = http_call(
        ep,
        "PUT",
        IMDS_TOKEN_PATH,
        &[(
            "X-aws-ec2-metadata-token-ttl-seconds",
            IMDS_SESSION_TTL_SECS,
        )],
    )?;
    let token = body.trim();
    // It goes back out in a header: visible ASCII only, so it cannot inject header lines.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ImdsError::BadResponse(
            "empty or non-printable session token".to_string(),
        ));
    }
    Ok(token.to_string())
}

// ---------------------------------------------------------------------------------------------
// Minimal blocking HTTP/1.1 client (metadata service only)
// ---------------------------------------------------------------------------------------------

/// One request on a fresh connection; returns the body of a 200 response.
fn http_call(
    ep: &ImdsEndpoint,
    method: &'static str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<String, ImdsError> {
    let addrs: Vec<_> = ep
        .connect_to
        .to_socket_addrs()
        .map_err(ImdsError::Resolve)?
        .collect();
    let mut last_err = std::io::Error::new(ErrorKind::NotFound, "no address");
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, IMDS_CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let mut stream = stream.ok_or(ImdsError::Connect(last_err))?;
    let deadline = Instant::now() + IMDS_IO_TIMEOUT;

    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n",
        ep.authority
    );
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    if method != "GET" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream
        .set_write_timeout(Some(IMDS_IO_TIMEOUT))
        .map_err(ImdsError::Io)?;
    stream.write_all(req.as_bytes()).map_err(io_or_timeout)?;

    let (status, body) = read_response(&mut stream, deadline)?;
    if status != 200 {
        return Err(ImdsError::Status {
            method,
            path: path.to_string(),
            status,
        });
    }
    String::from_utf8(body).map_err(|_| ImdsError::BadHttp("body is not UTF-8"))
}

fn io_or_timeout(e: std::io::Error) -> ImdsError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ImdsError::Timeout(IMDS_IO_TIMEOUT),
        _ => ImdsError::Io(e),
    }
}

fn read_response(stream: &mut TcpStream, deadline: Instant) -> Result<(u16, Vec<u8>), ImdsError> {
    let mut buf = Vec::with_capacity(IMDS_READ_CHUNK_BYTES);
    let mut chunk = [0u8; IMDS_READ_CHUNK_BYTES];
    loop {
        if let Some(done) = parse_response(&buf, false)? {
            return Ok(done);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ImdsError::Timeout(IMDS_IO_TIMEOUT));
        }
        stream
            .set_read_timeout(Some(remaining))
            .map_err(ImdsError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_or_timeout(e)),
        };
        if n == 0 {
            return parse_response(&buf, true)?
                .ok_or(ImdsError::BadHttp("connection closed mid-response"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.len() > IMDS_MAX_RESPONSE_BYTES {
            return Err(ImdsError::BadHttp("response too large"));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a buffered response. `Ok(None)`: incomplete, read more (only when `!eof`).
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, ImdsError> {
    let incomplete = |eof: bool| {
        if eof {
            Err(ImdsError::BadHttp("connection closed mid-response"))
        } else {
            Ok(None)
        }
    };
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return incomplete(eof);
    };
    let head = std::str::from_utf8(buf.get(..head_end).unwrap_or_default())
        .map_err(|_| ImdsError::BadHttp("header is not UTF-8"))?;
    let body = buf.get(head_end + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ImdsError::BadHttp("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .ok_or(ImdsError::BadHttp("bad status code"))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ImdsError::BadHttp("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| ImdsError::BadHttp("bad Content-Length"))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    if chunked {
        return match decode_chunked(body)? {
            Some(decoded) => Ok(Some((status, decoded))),
            None => incomplete(eof),
        };
    }
    match content_length {
        Some(n) => match body.get(..n) {
            Some(b) => Ok(Some((status, b.to_vec()))),
            None => incomplete(eof),
        },
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

/// Decodes a chunked body. `Ok(None)`: more bytes needed. Trailers are ignored.
fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, ImdsError> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(rest.get(..line_end).unwrap_or_default())
            .map_err(|_| ImdsError::BadHttp("bad chunk size"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| ImdsError::BadHttp("bad chunk size"))?;
        let data_start = line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        let data_end = data_start
            .checked_add(size)
            .ok_or(ImdsError::BadHttp("bad chunk size"))?;
        let crlf_end = data_end
            .checked_add(2)
            .ok_or(ImdsError::BadHttp("bad chunk size"))?;
        let (Some(data), Some(crlf)) =
            (rest.get(data_start..data_end), rest.get(data_end..crlf_end))
        else {
            return Ok(None);
        };
        if crlf != b"\r\n" {
            return Err(ImdsError::BadHttp("chunk not followed by CRLF"));
        }
        out.extend_from_slice(data);
        rest = rest.get(crlf_end..).unwrap_or_default();
    }
}

// ---------------------------------------------------------------------------------------------
// Token provider
// ---------------------------------------------------------------------------------------------

/// What librdkafka's OAUTHBEARER refresh callback needs: a fresh MSK IAM token per call.
#[derive(Debug)]
pub struct MskIamTokenProvider {
    region: String,
    creds: CredentialChain,
}

impl MskIamTokenProvider {
    /// `region` if given, else `AWS_REGION` / `AWS_DEFAULT_REGION` (as captured by `creds`),
    /// else the metadata service's `placement/region`. Credentials are not fetched here.
    pub fn new(region: Option<String>, creds: CredentialChain) -> Result<Self, MskIamError> {
        let region = match region
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
        {
            Some(r) => r,
            None => creds.region()?,
        };
        let valid = !region.is_empty()
            && region.len() <= MAX_REGION_LEN
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(MskIamError::InvalidRegion(
                region.chars().take(128).collect(),
            ));
        }
        Ok(Self { region, creds })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// (token, lifetime as absolute Unix ms, principal name). The lifetime is the presigned
    /// URL's expiry (now + 900 s) capped by the credentials' expiry.
    pub fn token(&self) -> Result<(String, i64, String), String> {
        self.token_at(now_epoch_secs()).map_err(|e| e.to_string())
    }

    fn token_at(&self, now: i64) -> Result<(String, i64, String), MskIamError> {
        let creds = self.creds.credentials_at(now)?;
        let token = generate_token(&self.region, &creds, now, USER_AGENT);
        let lifetime_ms = token_lifetime_ms(now, creds.expiration_epoch_secs);
        tracing::debug!(region = %self.region, lifetime_ms, "generated MSK IAM token");
        Ok((token, lifetime_ms, PRINCIPAL_NAME.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{SocketAddr, TcpListener};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    // ---- SigV4 primitives -------------------------------------------------------------------

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
    // Expected tokens were produced by `tests/msk_iam_reference.py`, which runs Amazon's
    // reference signer (`aws-msk-iam-sasl-signer-python` 1.0.2 on botocore 1.44.8) through its
    // private `__construct_auth_token` with botocore's clock frozen and the User-Agent fixed,
    // for the credentials below. Its output lines are `<case> <token> <expiry_ms>`; they are
    // recorded here verbatim so the tests need no Python.

    const REF_ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const REF_SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const REF_SESSION_TOKEN: &str =
        "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+abc/def==";

    fn ref_creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: REF_ACCESS_KEY.into(),
            secret_access_key: REF_SECRET_KEY.into(),
            session_token: token.map(str::to_string),
            expiration_epoch_secs: None,
        }
    }

    /// Case `no_session_token`: us-east-1, 2024-03-01T12:34:56Z, UA `capture-proxy/0.1.0`.
    #[test]
    fn reference_token_without_session_token() {
        let expected = "aHR0cHM6Ly9rYWZrYS51cy1lYXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJQUlPU0ZPRE5ON0VYQU1QTEUlMkYyMDI0MDMwMSUyRnVzLWVhc3QtMSUyRmthZmthLWNsdXN0ZXIlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDI0MDMwMVQxMjM0NTZaJlgtQW16LUV4cGlyZXM9OTAwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCZYLUFtei1TaWduYXR1cmU9NjBjMmIyMDNiYTlhZTY5ZTA0YzYxZGVlYjgwZDQ0YjEwZWY5YjRjNGVkMTZlODA4N2U0MGYyNWY4NjUzZDlhNyZVc2VyLUFnZW50PWNhcHR1cmUtcHJveHklMkYwLjEuMA";
        let now = 1_709_296_496;
        let token = generate_token("us-east-1", &ref_creds(None), now, "capture-proxy/0.1.0");
        assert_eq!(token, expected);
        assert_eq!(token_lifetime_ms(now, None), 1_709_297_396_000);
    }

    /// Case `session_token`: eu-central-1, 2024-02-29T23:59:59Z, UA `capture-proxy/0.1.0`.
    #[test]
    fn reference_token_with_session_token() {
        let expected = "aHR0cHM6Ly9rYWZrYS5ldS1jZW50cmFsLTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJQUlPU0ZPRE5ON0VYQU1QTEUlMkYyMDI0MDIyOSUyRmV1LWNlbnRyYWwtMSUyRmthZmthLWNsdXN0ZXIlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDI0MDIyOVQyMzU5NTlaJlgtQW16LUV4cGlyZXM9OTAwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCZYLUFtei1TZWN1cml0eS1Ub2tlbj1JUW9KYjNKcFoybHVYMlZqRVhBTVBMRSUyRiUyRiUyRiUyRiUyRiUyRiUyRiUyRiUyRiUyRndFYUNYVnpMV1ZoYzNRdE1TSkhNRVVDSVFEJTJCYWJjJTJGZGVmJTNEJTNEJlgtQW16LVNpZ25hdHVyZT0xMzBmNDI0NGFiYWE5ZjhjMGU1N2Q4NzBhYzg2NGM4MTY0MjU3OGE1YTUzZTBkYTBiYzM0NzU2MzIyNTAxYmNhJlVzZXItQWdlbnQ9Y2FwdHVyZS1wcm94eSUyRjAuMS4w";
        let now = 1_709_251_199;
        let creds = ref_creds(Some(REF_SESSION_TOKEN));
        let token = generate_token("eu-central-1", &creds, now, "capture-proxy/0.1.0");
        assert_eq!(token, expected);
        assert_eq!(token_lifetime_ms(now, None), 1_709_252_099_000);
    }

    /// Case `user_agent_escaping`: ap-southeast-2, 2031-12-31T00:00:01Z, UA with characters
    /// that form-encoding escapes.
    #[test]
    fn reference_token_user_agent_escaping() {
        let expected = "aHR0cHM6Ly9rYWZrYS5hcC1zb3V0aGVhc3QtMi5hbWF6b25hd3MuY29tLz9BY3Rpb249a2Fma2EtY2x1c3RlciUzQUNvbm5lY3QmWC1BbXotQWxnb3JpdGhtPUFXUzQtSE1BQy1TSEEyNTYmWC1BbXotQ3JlZGVudGlhbD1BS0lBSU9TRk9ETk43RVhBTVBMRSUyRjIwMzExMjMxJTJGYXAtc291dGhlYXN0LTIlMkZrYWZrYS1jbHVzdGVyJTJGYXdzNF9yZXF1ZXN0JlgtQW16LURhdGU9MjAzMTEyMzFUMDAwMDAxWiZYLUFtei1FeHBpcmVzPTkwMCZYLUFtei1TaWduZWRIZWFkZXJzPWhvc3QmWC1BbXotU2VjdXJpdHktVG9rZW49SVFvSmIzSnBaMmx1WDJWakVYQU1QTEUlMkYlMkYlMkYlMkYlMkYlMkYlMkYlMkYlMkYlMkZ3RWFDWFZ6TFdWaGMzUXRNU0pITUVVQ0lRRCUyQmFiYyUyRmRlZiUzRCUzRCZYLUFtei1TaWduYXR1cmU9NGVhNDczYTU3NThjYmQwNDY3MWZjMTNkYjMwNzg1ZTA3MDc4Y2MyNzY4ZWYwNzZlMzRmMzVlMjBiOTcwZWU4ZiZVc2VyLUFnZW50PWNhcHR1cmUtcHJveHklMkYxLjIuMyslMjhsaW51eCUzQit4JTNEMSUyNnl-eiUyOQ";
        let creds = ref_creds(Some(REF_SESSION_TOKEN));
        let token = generate_token(
            "ap-southeast-2",
            &creds,
            1_956_441_601,
            "capture-proxy/1.2.3 (linux; x=1&y~z)",
        );
        assert_eq!(token, expected);
    }

    #[test]
    fn token_decodes_to_presigned_connect_url() {
        let token = generate_token("us-west-2", &ref_creds(None), 1_709_296_496, USER_AGENT);
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&token).unwrap()).unwrap();
        assert!(url.starts_with(
            "https://kafka.us-west-2.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&"
        ));
        assert!(url.contains("&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature="));
        assert!(url.ends_with(&format!("&User-Agent={}", form_encode(USER_AGENT))));
    }

    #[test]
    fn provider_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MskIamTokenProvider>();
        check::<CredentialChain>();
    }

    #[test]
    fn lifetime_capped_by_credential_expiry() {
        assert_eq!(token_lifetime_ms(1000, Some(1500)), 1_500_000);
        assert_eq!(token_lifetime_ms(1000, Some(5000)), 1_900_000);
        assert_eq!(token_lifetime_ms(1000, None), 1_900_000);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = ref_creds(Some(REF_SESSION_TOKEN));
        let s = format!("{c:?}");
        assert!(s.contains(REF_ACCESS_KEY));
        assert!(!s.contains("EXAMPLEKEY") && !s.contains("IQoJ"), "{s}");
    }

    // ---- Endpoint parsing and HTTP parsing ---------------------------------------------------

    #[test]
    fn endpoint_parsing() {
        let ep = ImdsEndpoint::parse("http://169.254.169.254").unwrap();
        assert_eq!(
            (ep.authority.as_str(), ep.connect_to.as_str()),
            ("169.254.169.254", "169.254.169.254:80")
        );
        let ep = ImdsEndpoint::parse("HTTP://127.0.0.1:8123/").unwrap();
        assert_eq!(ep.connect_to, "127.0.0.1:8123");
        assert_eq!(ep.authority, "127.0.0.1:8123");
        let ep = ImdsEndpoint::parse("http://[fd00:ec2::254]").unwrap();
        assert_eq!(ep.connect_to, "[fd00:ec2::254]:80");
        let ep = ImdsEndpoint::parse("http://[::1]:9").unwrap();
        assert_eq!(ep.connect_to, "[::1]:9");
        for bad in [
            "https://127.0.0.1",
            "127.0.0.1:80",
            "http://",
            "http://host/path",
            "http://host:port",
            "http://host:99999",
            "http://[::1",
            "http://[::1]x",
            "http://::1",
            "http://u@host",
            "http://ho st",
        ] {
            assert!(ImdsEndpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_parsing() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(r, false).unwrap(),
            Some((200, b"hello".to_vec()))
        );
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(r, false).unwrap(), Some((404, vec![])));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(r, false).unwrap(),
            Some((200, b"abcde".to_vec()))
        );
        let r = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil-eof";
        assert_eq!(parse_response(r, false).unwrap(), None);
        assert_eq!(
            parse_response(r, true).unwrap(),
            Some((200, b"until-eof".to_vec()))
        );
        for bad in [
            &b"SSH-2.0\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        ] {
            assert!(
                parse_response(bad, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Every truncation of valid responses: incomplete or error, never a panic.
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nffffffffffffffffff\r\n";
        for cut in 0..=full.len() {
            let _ = parse_response(&full[..cut], false);
            let _ = parse_response(&full[..cut], true);
        }
        // 0x...ed + 18 header bytes = usize::MAX: the CRLF end must not overflow.
        for size in [
            "ffffffffffffffed",
            "ffffffffffffffec",
            "fffffffffffffffe",
            "ffffffffffffffff",
        ] {
            let r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nab");
            assert!(matches!(
                parse_response(r.as_bytes(), false),
                Ok(None) | Err(_)
            ));
        }
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 0..full.len() {
            assert!(matches!(parse_response(&full[..cut], false), Ok(None)));
            assert!(parse_response(&full[..cut], true).is_err());
        }
    }

    #[test]
    fn credentials_document_parsing() {
        let now = 1_709_296_496;
        let doc = r#"{"Code":"Success","LastUpdated":"2024-03-01T12:00:00Z","Type":"AWS-HMAC",
            "AccessKeyId":"ASIAX","SecretAccessKey":"sec","Token":"tok",
            "Expiration":"2024-03-01T18:00:00Z"}"#;
        let c = parse_credentials_document(doc, now).unwrap();
        assert_eq!(c.access_key_id, "ASIAX");
        assert_eq!(c.secret_access_key, "sec");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert_eq!(c.expiration_epoch_secs, Some(1_709_316_000));
        for bad in [
            "not json",
            r#"{"Code":"Failure","AccessKeyId":"a","SecretAccessKey":"b"}"#,
            r#"{"SecretAccessKey":"b"}"#,
            r#"{"AccessKeyId":"a"}"#,
            r#"{"AccessKeyId":"a","SecretAccessKey":"b","Expiration":"soon"}"#,
            r#"{"AccessKeyId":"a","SecretAccessKey":"b","Expiration":"2024-03-01T12:00:00Z"}"#,
        ] {
            assert!(parse_credentials_document(bad, now).is_err(), "{bad}");
        }
    }

    // ---- Fake IMDSv2 server ------------------------------------------------------------------

    /// How long a fake server lives at most, whatever the test does (bounds its loop).
    const FAKE_SERVER_MAX_LIFE: Duration = Duration::from_secs(30);
    const FAKE_SESSION_TOKEN: &str = "FAKE-IMDS-SESSION-TOKEN";
    const FAKE_ROLE: &str = "capture-proxy-role";

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Serve,
        /// Accept connections and never answer.
        Hang,
    }

    struct FakeImds {
        addr: SocketAddr,
        /// "METHOD path" of every request, in order.
        requests: Arc<Mutex<Vec<String>>>,
        /// Requests that lacked the expected IMDSv2 header.
        unauthorized: Arc<AtomicUsize>,
        /// Credentials documents served so far.
        creds_served: Arc<AtomicUsize>,
        /// When set, the credentials endpoint answers 500.
        fail_creds: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    }

    impl FakeImds {
        fn start(mode: Mode, expiration: &str, region: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let unauthorized = Arc::new(AtomicUsize::new(0));
            let creds_served = Arc::new(AtomicUsize::new(0));
            let fail_creds = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let (r, u, c, f, s) = (
                requests.clone(),
                unauthorized.clone(),
                creds_served.clone(),
                fail_creds.clone(),
                stop.clone(),
            );
            let expiration = expiration.to_string();
            let region = region.to_string();
            let handle = std::thread::spawn(move || {
                let started = Instant::now();
                let mut held = Vec::new();
                while !s.load(Ordering::SeqCst) && started.elapsed() < FAKE_SERVER_MAX_LIFE {
                    let stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                    };
                    stream.set_nonblocking(false).unwrap();
                    if mode == Mode::Hang {
                        held.push(stream);
                        continue;
                    }
                    serve_one(stream, &r, &u, &c, &f, &expiration, &region);
                }
            });
            Self {
                addr,
                requests,
                unauthorized,
                creds_served,
                fail_creds,
                stop,
                handle: Some(handle),
            }
        }

        fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    impl Drop for FakeImds {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    fn serve_one(
        mut stream: TcpStream,
        requests: &Mutex<Vec<String>>,
        unauthorized: &AtomicUsize,
        creds_served: &AtomicUsize,
        fail_creds: &AtomicBool,
        expiration: &str,
        region: &str,
    ) {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&buf, b"\r\n\r\n").is_none() {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap().split(' ');
        let (method, path) = (
            request_line.next().unwrap().to_string(),
            request_line.next().unwrap().to_string(),
        );
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        requests.lock().unwrap().push(format!("{method} {path}"));
        assert!(headers.contains_key("host"));

        let role_path = format!("{IMDS_ROLES_PATH}{FAKE_ROLE}");
        let authorized =
            headers.get("x-aws-ec2-metadata-token").map(String::as_str) == Some(FAKE_SESSION_TOKEN);
        let (status, body, chunked) = if method == "PUT" && path == IMDS_TOKEN_PATH {
            if headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .map(String::as_str)
                == Some("21600")
            {
                (200, FAKE_SESSION_TOKEN.to_string(), false)
            } else {
                (400, String::new(), false)
            }
        } else if method != "GET" || !authorized {
            unauthorized.fetch_add(1, Ordering::SeqCst);
            (401, String::new(), false)
        } else if path == IMDS_ROLES_PATH {
            (200, format!("{FAKE_ROLE}\n"), false)
        } else if path == role_path {
            if fail_creds.load(Ordering::SeqCst) {
                (500, String::new(), false)
            } else {
                let n = creds_served.fetch_add(1, Ordering::SeqCst) + 1;
                let doc = format!(
                    r#"{{"Code":"Success","LastUpdated":"2024-03-01T12:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAFAKE{n}","SecretAccessKey":"fake/secret+{n}","Token":"fake-session-token-{n}","Expiration":"{expiration}"}}"#
                );
                (200, doc, true)
            }
        } else if path == IMDS_REGION_PATH {
            (200, region.to_string(), false)
        } else {
            (404, String::new(), false)
        };
        let mut resp = format!("HTTP/1.1 {status} X\r\nConnection: close\r\nServer: fake\r\n");
        if chunked {
            // Two chunks, to exercise the client's chunked decoding.
            let (a, b) = body.split_at(body.len() / 2);
            resp.push_str("Transfer-Encoding: chunked\r\n\r\n");
            resp.push_str(&format!(
                "{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            ));
        } else {
            resp.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        let _ = stream.write_all(resp.as_bytes());
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// An address on loopback where nothing listens (bound, then released).
    fn dead_endpoint() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}")
    }

    // ---- Credential chain --------------------------------------------------------------------

    #[test]
    fn env_credentials_take_precedence() {
        let imds = FakeImds::start(Mode::Serve, "2030-01-01T00:00:00Z", "eu-west-1");
        let ep = imds.endpoint();
        let chain = CredentialChain::from_env(&env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "envtoken"),
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "eu-north-1"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep),
        ]));
        let c = chain.credentials().unwrap();
        assert_eq!(
            c,
            Credentials {
                access_key_id: "AKIAENV".into(),
                secret_access_key: "envsecret".into(),
                session_token: Some("envtoken".into()),
                expiration_epoch_secs: None,
            }
        );
        assert_eq!(chain.region().unwrap(), "us-west-2");
        assert!(imds.requests().is_empty(), "{:?}", imds.requests());

        let chain = CredentialChain::from_env(&env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_DEFAULT_REGION", "eu-north-1"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep),
        ]));
        assert_eq!(chain.credentials().unwrap().session_token, None);
        assert_eq!(chain.region().unwrap(), "eu-north-1");
        assert!(imds.requests().is_empty());
    }

    #[test]
    fn partial_env_credentials_are_an_error() {
        let chain = CredentialChain::from_env(&env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]));
        let err = chain.credentials().unwrap_err();
        assert!(matches!(err, MskIamError::PartialEnvCredentials(_)));
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    #[test]
    fn imds_credentials_and_region() {
        let imds = FakeImds::start(Mode::Serve, "2030-01-01T00:00:00Z", "eu-west-1");
        let chain = CredentialChain::from_env(&env_of(&[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint()),
        ]));
        let c = chain.credentials().unwrap();
        assert_eq!(c.access_key_id, "ASIAFAKE1");
        assert_eq!(c.secret_access_key, "fake/secret+1");
        assert_eq!(c.session_token.as_deref(), Some("fake-session-token-1"));
        assert_eq!(c.expiration_epoch_secs, Some(1_893_456_000));
        assert_eq!(chain.region().unwrap(), "eu-west-1");
        assert_eq!(
            imds.requests(),
            [
                "PUT /latest/api/token",
                "GET /latest/meta-data/iam/security-credentials/",
                "GET /latest/meta-data/iam/security-credentials/capture-proxy-role",
                "PUT /latest/api/token",
                "GET /latest/meta-data/placement/region",
            ]
        );
        assert_eq!(imds.unauthorized.load(Ordering::SeqCst), 0);
        // Cached: no further requests.
        assert_eq!(chain.credentials().unwrap(), c);
        assert_eq!(imds.requests().len(), 5);
    }

    #[test]
    fn imds_credentials_refresh_before_expiry() {
        let exp = 1_893_456_000; // 2030-01-01T00:00:00Z
        let imds = FakeImds::start(Mode::Serve, "2030-01-01T00:00:00Z", "eu-west-1");
        let chain = CredentialChain::from_env(&env_of(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &imds.endpoint(),
        )]));
        assert_eq!(
            chain.credentials_at(exp - 3600).unwrap().access_key_id,
            "ASIAFAKE1"
        );
        // Still outside the refresh margin: cached.
        let c = chain
            .credentials_at(exp - CREDENTIAL_REFRESH_MARGIN_SECS - 1)
            .unwrap();
        assert_eq!(c.access_key_id, "ASIAFAKE1");
        assert_eq!(imds.creds_served.load(Ordering::SeqCst), 1);
        // Inside the margin: refetched.
        let c = chain
            .credentials_at(exp - CREDENTIAL_REFRESH_MARGIN_SECS)
            .unwrap();
        assert_eq!(c.access_key_id, "ASIAFAKE2");
        assert_eq!(imds.creds_served.load(Ordering::SeqCst), 2);
        // Refresh failing while the cached credentials are still valid: keep using them.
        imds.fail_creds.store(true, Ordering::SeqCst);
        let c = chain.credentials_at(exp - 60).unwrap();
        assert_eq!(c.access_key_id, "ASIAFAKE2");
        // Once they have expired, the failure is reported.
        let err = chain.credentials_at(exp).unwrap_err();
        assert!(err.to_string().contains("500"), "{err}");
        assert_eq!(imds.unauthorized.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn imds_disabled_is_a_clear_error() {
        let chain = CredentialChain::from_env(&env_of(&[
            ("AWS_EC2_METADATA_DISABLED", "TRUE"),
            // Must not be used: disabled wins.
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &dead_endpoint()),
        ]));
        let err = chain.credentials().unwrap_err();
        assert!(matches!(err, MskIamError::NoCredentialsImdsDisabled));
        assert!(
            err.to_string().contains("AWS_EC2_METADATA_DISABLED=true"),
            "{err}"
        );
        let err = chain.region().unwrap_err();
        assert!(matches!(err, MskIamError::NoRegionImdsDisabled));
        let err = MskIamTokenProvider::new(None, chain).unwrap_err();
        assert!(matches!(err, MskIamError::NoRegionImdsDisabled));
    }

    #[test]
    fn invalid_endpoint_is_a_clear_error() {
        let chain = CredentialChain::from_env(&env_of(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "https://127.0.0.1:1",
        )]));
        let err = chain.credentials().unwrap_err();
        assert!(
            matches!(err, MskIamError::InvalidImdsEndpoint { .. }),
            "{err}"
        );
    }

    #[test]
    fn imds_down_fails_fast() {
        let ep = dead_endpoint();
        let chain =
            CredentialChain::from_env(&env_of(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep)]));
        let started = Instant::now();
        let err = chain.credentials().unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                &err,
                MskIamError::Imds {
                    source: ImdsError::Connect(_),
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&ep) && msg.contains("cannot connect"), "{msg}");
    }

    #[test]
    fn imds_hanging_times_out() {
        let imds = FakeImds::start(Mode::Hang, "", "");
        let chain = CredentialChain::from_env(&env_of(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &imds.endpoint(),
        )]));
        let started = Instant::now();
        let err = chain.credentials().unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= IMDS_IO_TIMEOUT && took < Duration::from_millis(2500),
            "{took:?}"
        );
        assert!(
            matches!(
                &err,
                MskIamError::Imds {
                    source: ImdsError::Timeout(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    // ---- Token provider ----------------------------------------------------------------------

    #[test]
    fn provider_with_imds_region_and_capped_lifetime() {
        let now = now_epoch_secs();
        // Credentials expiring in 10 minutes: the token lifetime is capped to that.
        let exp = now + 600;
        let imds = FakeImds::start(Mode::Serve, &format_iso8601(exp), "ap-northeast-1");
        let chain = CredentialChain::from_env(&env_of(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &imds.endpoint(),
        )]));
        let provider = MskIamTokenProvider::new(None, chain).unwrap();
        assert_eq!(provider.region(), "ap-northeast-1");
        let (token, lifetime_ms, principal) = provider.token().unwrap();
        assert_eq!(principal, "kafka-cluster");
        assert_eq!(lifetime_ms, exp * 1000);
        let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&token).unwrap()).unwrap();
        assert!(
            url.starts_with("https://kafka.ap-northeast-1.amazonaws.com/?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Credential=ASIAFAKE1%2F"), "{url}");
        assert!(
            url.contains("X-Amz-Security-Token=fake-session-token-1&"),
            "{url}"
        );

        // Deterministic at a fixed time: equals generate_token for the same inputs.
        let at = now + 5;
        let (t2, l2, _) = provider.token_at(at).unwrap();
        let creds = provider.creds.credentials_at(at).unwrap();
        assert_eq!(t2, generate_token("ap-northeast-1", &creds, at, USER_AGENT));
        assert_eq!(l2, exp * 1000);
    }

    #[test]
    fn provider_region_precedence_and_validation() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_REGION", "us-west-2"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]);
        let p =
            MskIamTokenProvider::new(Some(" eu-west-3 ".into()), CredentialChain::from_env(&env))
                .unwrap();
        assert_eq!(p.region(), "eu-west-3");
        let p =
            MskIamTokenProvider::new(Some(String::new()), CredentialChain::from_env(&env)).unwrap();
        assert_eq!(p.region(), "us-west-2");
        let (_, lifetime_ms, _) = p.token().unwrap();
        let now_ms = now_epoch_secs() * 1000;
        assert!((now_ms + 899_000..=now_ms + 901_000).contains(&lifetime_ms));
        for bad in ["US-EAST-1", "us-east-1.evil.com/x", "us east"] {
            let err = MskIamTokenProvider::new(Some(bad.into()), CredentialChain::from_env(&env))
                .unwrap_err();
            assert!(matches!(err, MskIamError::InvalidRegion(_)), "{bad}");
        }
    }

    #[test]
    fn provider_token_error_is_descriptive() {
        let ep = dead_endpoint();
        let env = env_of(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep),
        ]);
        let p = MskIamTokenProvider::new(None, CredentialChain::from_env(&env)).unwrap();
        let msg = p.token().unwrap_err();
        assert!(msg.contains(&ep) && msg.contains("credentials"), "{msg}");
    }
}
