//! The wire side of the AWS credential sources: the requests each endpoint expects and the
//! documents it answers with — IMDSv2 (session token, role name, credentials, region), the
//! container credentials endpoint, and STS (the form-encoded query API and its XML
//! responses, credentials or errors) — plus the HTTP status handling around them. Which
//! source is used, with which settings, and the caching, are `aws_creds`'s.
//!
//! May depend on: `super::aws_http` (the blocking client), `super::sigv4` (`Credentials`,
//! URI encoding), `super::date`, `serde_json`, `thiserror`.
//!
//! Invariants: responses are parsed without panics, whatever they hold; credentials that are
//! already expired are refused; values that go back out in a request line or header (the
//! IMDS session token, the role name) are checked first; an error carries no secret (an STS
//! error's `Code` and `Message` are kept, truncated; response bodies are not).

use std::net::IpAddr;
use std::time::Duration;

use super::aws_http::{self, Endpoint, HttpError, Request, Timeouts};
use super::date::{format_iso8601, parse_iso8601};
use super::sigv4::{self, Credentials};

/// 1 s to connect, 1 s for the rest: the service is link-local and answers in milliseconds;
/// off EC2 nothing answers and we must fail fast.
pub(super) const IMDS_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(1),
    io: Duration::from_secs(1),
};
/// Lifetime asked for the IMDSv2 session token (the maximum, the SDKs' default).
const IMDS_SESSION_TTL_SECS: &str = "21600";
pub(super) const IMDS_TOKEN_PATH: &str = "/latest/api/token";
pub(super) const IMDS_ROLES_PATH: &str = "/latest/meta-data/iam/security-credentials/";
pub(super) const IMDS_REGION_PATH: &str = "/latest/meta-data/placement/region";

/// The container endpoint is local (link-local or loopback): 2 s to connect, 5 s for the rest.
const CONTAINER_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    io: Duration::from_secs(5),
};
/// STS is remote (TLS handshake included): 3 s to connect, 5 s for the rest. These block the
/// thread that polls the Kafka client, so they stay short; a refresh is retried on the next
/// token request.
const STS_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(3),
    io: Duration::from_secs(5),
};
pub(super) const STS_API_VERSION: &str = "2011-06-15";
pub(super) const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// A request to a credential endpoint that did not give credentials.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("HTTP status {status} for {method} {path}{detail}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        /// `: Code: Message` of an STS error response, else empty.
        detail: String,
    },
    #[error("no IAM role is attached to this instance")]
    NoRole,
    #[error("unusable IAM role name {0:?}")]
    BadRoleName(String),
    #[error("unusable response: {0}")]
    BadResponse(String),
}

pub(super) fn form_body(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Hosts the SDKs accept for a plain-http `AWS_CONTAINER_CREDENTIALS_FULL_URI`: loopback, the
/// ECS agent (169.254.170.2) and EKS Pod Identity (169.254.170.23, fd00:ec2::23).
pub(super) fn allowed_container_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            v4.is_loopback()
                || v4.octets() == [169, 254, 170, 2]
                || v4.octets() == [169, 254, 170, 23]
        }
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.segments() == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x23]
        }
        Err(_) => false,
    }
}

/// `GET` the container endpoint's credentials document, with `authorization` (the token)
/// as the `Authorization` header when given.
pub(super) fn fetch_container_credentials(
    ep: &Endpoint,
    authorization: Option<&str>,
    now: i64,
) -> Result<Credentials, FetchError> {
    let mut headers: Vec<(&str, &str)> = vec![("Accept", "application/json")];
    if let Some(t) = authorization {
        headers.push(("Authorization", t));
    }
    let body = get_200(
        ep,
        &Request {
            method: "GET",
            path: &ep.path,
            headers: &headers,
            body: b"",
        },
        CONTAINER_TIMEOUTS,
    )?;
    parse_credentials_document(&body, now)
}

/// One request; the body of a 200 answer, else a status error.
fn get_200(ep: &Endpoint, req: &Request<'_>, t: Timeouts) -> Result<String, FetchError> {
    let resp = aws_http::call(ep, req, t)?;
    if resp.status != 200 {
        return Err(FetchError::Status {
            method: req.method,
            path: req.path.chars().take(256).collect(),
            status: resp.status,
            detail: String::new(),
        });
    }
    String::from_utf8(resp.body)
        .map_err(|_| FetchError::BadResponse("body is not UTF-8".to_string()))
}

// ---------------------------------------------------------------------------------------------
// STS
// ---------------------------------------------------------------------------------------------

pub(super) fn sts_call(
    ep: &Endpoint,
    req: &Request<'_>,
    now: i64,
) -> Result<Credentials, FetchError> {
    let resp = aws_http::call(ep, req, STS_TIMEOUTS)?;
    let text = resp.text();
    if resp.status != 200 {
        let detail = match (xml_tag(&text, "Code"), xml_tag(&text, "Message")) {
            (Some(code), Some(msg)) => {
                format!(": {code}: {}", msg.chars().take(256).collect::<String>())
            }
            (Some(code), None) => format!(": {code}"),
            _ => String::new(),
        };
        return Err(FetchError::Status {
            method: "POST",
            path: req.path.to_string(),
            status: resp.status,
            detail,
        });
    }
    parse_sts_credentials(&text, now)
}

/// The `<Credentials>` of an `AssumeRole` / `AssumeRoleWithWebIdentity` response.
fn parse_sts_credentials(xml: &str, now: i64) -> Result<Credentials, FetchError> {
    let bad = |m: &str| FetchError::BadResponse(m.to_string());
    let creds =
        xml_tag(xml, "Credentials").ok_or_else(|| bad("no <Credentials> in the STS response"))?;
    let field = |name| xml_tag(&creds, name).filter(|v| !v.is_empty());
    let access_key_id = field("AccessKeyId").ok_or_else(|| bad("no AccessKeyId"))?;
    let secret_access_key = field("SecretAccessKey").ok_or_else(|| bad("no SecretAccessKey"))?;
    let session_token = field("SessionToken").ok_or_else(|| bad("no SessionToken"))?;
    let expiration = field("Expiration")
        .and_then(|e| parse_iso8601(&e))
        .ok_or_else(|| bad("no or unparsable Expiration"))?;
    if expiration <= now {
        return Err(FetchError::BadResponse(format!(
            "credentials already expired at {}",
            format_iso8601(expiration)
        )));
    }
    Ok(Credentials {
        access_key_id,
        secret_access_key,
        session_token: Some(session_token),
        expiration_epoch_secs: Some(expiration),
    })
}

/// The unescaped, trimmed text of the first `<tag>…</tag>` (no attributes, no nesting of the
/// same tag: STS responses are that simple).
fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)?.checked_add(open.len())?;
    let rest = xml.get(start..)?;
    let end = rest.find(&close)?;
    Some(xml_unescape(rest.get(..end)?.trim()))
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(rest.get(..i).unwrap_or(""));
        let after = rest.get(i..).unwrap_or("");
        let Some(semi) = after.find(';').filter(|&n| n <= 10) else {
            out.push('&');
            rest = after.get(1..).unwrap_or("");
            continue;
        };
        let entity = after.get(1..semi).unwrap_or("");
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = after.get(semi + 1..).unwrap_or("");
            }
            None => {
                out.push('&');
                rest = after.get(1..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// EC2 instance metadata (IMDSv2) and the credentials JSON document
// ---------------------------------------------------------------------------------------------

/// IMDSv2 session token, then the role name, then that role's credentials.
pub(super) fn fetch_instance_credentials(
    ep: &Endpoint,
    now: i64,
) -> Result<Credentials, FetchError> {
    let session = imds_session_token(ep)?;
    let auth = [("X-aws-ec2-metadata-token", session.as_str())];
    let get = |path: &str| {
        get_200(
            ep,
            &Request {
                method: "GET",
                path,
                headers: &auth,
                body: b"",
            },
            IMDS_TIMEOUTS,
        )
    };
    let roles = match get(IMDS_ROLES_PATH) {
        Err(FetchError::Status { status: 404, .. }) => return Err(FetchError::NoRole),
        other => other?,
    };
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or(FetchError::NoRole)?;
    // IAM role names are [A-Za-z0-9+=,.@_-]; anything else would corrupt the request line.
    if !role
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        return Err(FetchError::BadRoleName(role.chars().take(128).collect()));
    }
    let body = get(&format!("{IMDS_ROLES_PATH}{role}"))?;
    parse_credentials_document(&body, now)
}

/// The JSON credentials document of IMDS and of the container endpoint.
fn parse_credentials_document(body: &str, now: i64) -> Result<Credentials, FetchError> {
    let bad = |m: &str| FetchError::BadResponse(m.to_string());
    let doc: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| FetchError::BadResponse(format!("credentials are not JSON: {e}")))?;
    let field = |name: &str| {
        doc.get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(code) = field("Code") {
        if code != "Success" {
            return Err(FetchError::BadResponse(format!(
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
            return Err(FetchError::BadResponse(format!(
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

pub(super) fn fetch_region(ep: &Endpoint) -> Result<String, FetchError> {
    let session = imds_session_token(ep)?;
    let body = get_200(
        ep,
        &Request {
            method: "GET",
            path: IMDS_REGION_PATH,
            headers: &[("X-aws-ec2-metadata-token", session.as_str())],
            body: b"",
        },
        IMDS_TIMEOUTS,
    )?;
    Ok(body.trim().to_string())
}

fn imds_session_token(ep: &Endpoint) -> Result<String, FetchError> {
    let body = get_200(
        ep,
        &Request {
            method: "PUT",
            path: IMDS_TOKEN_PATH,
            headers: &[(
                "X-aws-ec2-metadata-token-ttl-seconds",
                IMDS_SESSION_TTL_SECS,
            )],
            body: b"",
        },
        IMDS_TIMEOUTS,
    )?;
    let token = body.trim();
    // It goes back out in a header: visible ASCII only, so it cannot inject header lines.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::BadResponse(
            "empty or non-printable session token".to_string(),
        ));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // The container endpoint's shape (no Code, an AccountId, fractional seconds).
        let doc = r#"{"AccessKeyId":"A","SecretAccessKey":"S","Token":"T","AccountId":"1",
            "Expiration":"2024-03-01T18:00:00.123Z"}"#;
        let c = parse_credentials_document(doc, now).unwrap();
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

    #[test]
    fn sts_response_parsing() {
        let now = 1_709_296_496;
        let xml = "<?xml version=\"1.0\"?>\n<AssumeRoleWithWebIdentityResponse xmlns=\"x\">\
            <AssumeRoleWithWebIdentityResult>\
            <SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>\
            <AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s</Arn></AssumedRoleUser>\
            <Credentials>\n  <AccessKeyId>ASIAWEB</AccessKeyId>\n\
            <SecretAccessKey>a/b+c</SecretAccessKey>\
            <SessionToken>IQo&amp;&lt;x&gt;&#47;&#x2F;==</SessionToken>\
            <Expiration>2024-03-01T13:00:00.5Z</Expiration></Credentials>\
            </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let c = parse_sts_credentials(xml, now).unwrap();
        assert_eq!(c.access_key_id, "ASIAWEB");
        assert_eq!(c.secret_access_key, "a/b+c");
        assert_eq!(c.session_token.as_deref(), Some("IQo&<x>//=="));
        assert_eq!(c.expiration_epoch_secs, Some(1_709_298_000));
        for bad in [
            "",
            "<ErrorResponse><Error><Code>X</Code></Error></ErrorResponse>",
            "<Credentials><AccessKeyId>A</AccessKeyId></Credentials>",
            "<Credentials><AccessKeyId>A</AccessKeyId><SecretAccessKey>S</SecretAccessKey>\
             <SessionToken>T</SessionToken></Credentials>",
            "<Credentials><AccessKeyId>A</AccessKeyId><SecretAccessKey>S</SecretAccessKey>\
             <SessionToken>T</SessionToken><Expiration>2024-03-01T12:00:00Z</Expiration></Credentials>",
            "<Credentials><AccessKeyId>A",
        ] {
            assert!(parse_sts_credentials(bad, now).is_err(), "{bad}");
        }
        assert_eq!(
            xml_unescape("a &amp;&bogus; &#65;&#x42; & &;"),
            "a &&bogus; AB & &;"
        );
    }
}
