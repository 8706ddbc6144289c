//! Amazon MSK IAM authentication for the Kafka clients (the producer and `inspect`'s
//! consumer), carried over SASL/OAUTHBEARER: the token and its provider.
//!
//! librdkafka has no `AWS_MSK_IAM` mechanism, so (like Amazon's MSK IAM SASL signer
//! libraries) we hand librdkafka an OAUTHBEARER token that is the base64url (unpadded) encoding
//! of a SigV4-presigned `GET https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect&...`
//! URL (service `kafka-cluster`, `X-Amz-Expires=900`, plus an unsigned `User-Agent` parameter).
//! This module owns that presigning and [`MskIamTokenProvider`]; the credentials and the
//! region come from `aws_creds` (the AWS credential chain), the SigV4 primitives from `sigv4`.
//!
//! May depend on: `super::aws_creds` (credentials, region), `super::sigv4` (signing),
//! `super::aws_http` (the `User-Agent`), `base64`, `tracing`. No I/O of its own.
//!
//! Invariants: for the same inputs a token is byte-identical to the one Amazon's reference
//! signer (`aws-msk-iam-sasl-signer-python`) produces; a token's lifetime never exceeds its
//! credentials' expiry; secrets never appear in `Debug` output or logs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

pub use super::aws_creds::{AwsCredsError, CredentialChain};
pub use super::sigv4::Credentials;

use super::aws_creds::{now_epoch_secs, valid_region};
use super::sigv4::{
    amz_date_and_timestamp, form_encode, hex, hmac_sha256, sha256_hex, signing_key, uri_encode,
    EMPTY_PAYLOAD_SHA256, SIGV4_ALGORITHM,
};

/// SigV4 service name MSK IAM access control expects in the credential scope.
const SIGNING_SERVICE: &str = "kafka-cluster";
/// The one action the token authorises: connecting to the cluster.
const CONNECT_ACTION: &str = "kafka-cluster:Connect";

/// Validity of the presigned URL in seconds (`X-Amz-Expires`). 900 s (15 min) is the value
/// all of Amazon's MSK IAM signers use; librdkafka refreshes the token well before that.
pub const TOKEN_EXPIRY_SECS: i64 = 900;

/// OAUTHBEARER principal name reported to librdkafka. It is not sent to the broker (MSK
/// derives the principal from the signature); Amazon's Java `aws-msk-iam-auth` reports the
/// signing service name (`IAMOAuthBearerToken::principalName`), and so do we.
pub const PRINCIPAL_NAME: &str = "kafka-cluster";

/// `User-Agent` query parameter appended (unsigned) to the presigned URL (also the HTTP
/// `User-Agent` of the credential sources' requests).
pub const USER_AGENT: &str = super::aws_http::USER_AGENT;

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
// Token provider
// ---------------------------------------------------------------------------------------------

/// What librdkafka's OAUTHBEARER refresh callback needs: a fresh MSK IAM token per call.
#[derive(Debug)]
pub struct MskIamTokenProvider {
    region: String,
    creds: CredentialChain,
}

impl MskIamTokenProvider {
    /// `region` if given, else the chain's (`AWS_REGION`, `AWS_DEFAULT_REGION`, the
    /// profile's, the metadata service's). Checks the credential configuration (no fetch: a
    /// missing or broken setup fails here, at start-up, rather than at the first token) and
    /// logs which source will be used.
    pub fn new(region: Option<String>, creds: CredentialChain) -> Result<Self, AwsCredsError> {
        let region = match region
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
        {
            Some(r) if valid_region(&r) => r,
            Some(r) => return Err(AwsCredsError::InvalidRegion(r.chars().take(128).collect())),
            None => creds.region()?,
        };
        let source = creds.check()?;
        tracing::info!(%region, %source, "MSK IAM: AWS credential source");
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

    fn token_at(&self, now: i64) -> Result<(String, i64, String), AwsCredsError> {
        let creds = self.creds.credentials_at(now)?;
        let token = generate_token(&self.region, &creds, now, USER_AGENT);
        let lifetime_ms = token_lifetime_ms(now, creds.expiration_epoch_secs);
        tracing::debug!(region = %self.region, lifetime_ms, "generated MSK IAM token");
        Ok((token, lifetime_ms, PRINCIPAL_NAME.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::aws_creds::tests::{dead_endpoint, env_of, fake_imds};
    use super::super::date::format_iso8601;
    use super::*;

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

    #[test]
    fn provider_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MskIamTokenProvider>();
    }

    #[test]
    fn provider_with_imds_region_and_capped_lifetime() {
        let now = now_epoch_secs();
        // Credentials expiring in 10 minutes: the token lifetime is capped to that.
        let exp = now + 600;
        let (imds, _) = fake_imds(&format_iso8601(exp), "ap-northeast-1");
        let chain = CredentialChain::from_env(&env_of(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            &imds.url(),
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
            assert!(matches!(err, AwsCredsError::InvalidRegion(_)), "{bad}");
            let env_bad = env_of(&[("AWS_REGION", bad), ("AWS_EC2_METADATA_DISABLED", "true")]);
            let err =
                MskIamTokenProvider::new(None, CredentialChain::from_env(&env_bad)).unwrap_err();
            assert!(matches!(err, AwsCredsError::InvalidRegion(_)), "{bad}");
        }
    }

    /// A broken configuration fails when the provider is made (start-up), not at the first
    /// token; a fetch failure shows at the token, naming the source.
    #[test]
    fn provider_errors_are_descriptive() {
        let env = env_of(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIAONLY"),
        ]);
        let err = MskIamTokenProvider::new(None, CredentialChain::from_env(&env)).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        let env = env_of(&[("AWS_EC2_METADATA_DISABLED", "true")]);
        let err = MskIamTokenProvider::new(None, CredentialChain::from_env(&env)).unwrap_err();
        assert!(matches!(err, AwsCredsError::NoRegionImdsDisabled), "{err}");

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
