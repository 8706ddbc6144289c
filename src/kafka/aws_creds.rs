//! The AWS credential chain MSK IAM signs with, and the AWS region: which source applies, the
//! fetching from each one, and the cache that refreshes temporary credentials before they
//! expire.
//!
//! The order is the AWS SDK for Java 2.x's `DefaultCredentialsProvider` (what the Java
//! Capture Proxy used, through `aws-msk-iam-auth`), also the SDK for PHP's:
//! 1. environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`);
//! 2. web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, `AWS_ROLE_SESSION_NAME`):
//!    STS `AssumeRoleWithWebIdentity`, the token file re-read on every fetch;
//! 3. the shared config and credentials files, profile `AWS_PROFILE` (else `default`, used
//!    only if it names credentials): static keys, `role_arn` with `source_profile` (chained,
//!    STS `AssumeRole` signed with SigV4), `credential_source` or `web_identity_token_file`;
//! 4. container credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` on 169.254.170.2, or
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI`; `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN` sent as `Authorization`);
//! 5. the EC2 instance role through IMDSv2.
//!
//! (The Rust and Python SDKs try the profile before the web identity variables; the two only
//! differ when both are configured.) The first source that is *configured* is used, and its
//! failures are reported, never skipped for the next one — as the Rust SDK's chain stops at
//! a configured provider's error: falling through would hide a broken setup behind another
//! identity, or behind the metadata service's timeout.
//!
//! Region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, then the metadata
//! service. STS is called at `https://sts.{region}.amazonaws.com` unless
//! `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL` override it (ignored when
//! `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`).
//!
//! May depend on: `super::aws_sources` (each endpoint's requests and documents),
//! `super::aws_http` (endpoints), `super::aws_profile` (the shared files), `super::sigv4`
//! (`Credentials`, the `AssumeRole` signature), `super::date`, `thiserror`, `tracing`. No async runtime: it runs on the thread that polls
//! the Kafka client (librdkafka's token refresh callback), never on a worker.
//!
//! Invariants: configuration is read once, at construction (files included), except the
//! token files, which are re-read on every fetch (EKS rotates them); every request is bounded
//! by its source's timeouts and the client's size cap; the network peers are the configured
//! endpoints only; secrets (secret keys, session tokens, web identity and container
//! authorization tokens) never appear in `Debug` output, errors or logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::aws_http::{Endpoint, Request};
use super::aws_profile::{
    self, BaseCredentials, CredentialSource, ProfileError, ProfilePlan, ProfileSet, RoleStep,
};
pub use super::aws_sources::FetchError;
use super::aws_sources::{
    self, allowed_container_host, fetch_instance_credentials, fetch_region, form_body, sts_call,
    FORM_CONTENT_TYPE, STS_API_VERSION,
};
use super::date::format_iso8601;
use super::sigv4::{self, Credentials};

/// Cached temporary credentials are refreshed this many seconds before they expire: 300 s
/// (5 min), the margin the AWS SDKs use. The MSK token lifetime is capped by the credentials'
/// expiry, so a token never outlives its credentials; the margin leaves a freshly signed token
/// at least 5 minutes, and time for a failed refresh to be retried while the old credentials
/// still work.
pub const CREDENTIAL_REFRESH_MARGIN_SECS: i64 = 300;
/// While a refresh keeps failing and cached credentials are still valid, the warning is logged
/// at most once per this many seconds (librdkafka may ask for tokens much more often).
const REFRESH_WARN_INTERVAL_SECS: i64 = 60;

/// Metadata endpoint used when `AWS_EC2_METADATA_SERVICE_ENDPOINT` is not set.
const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// Host of `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (the ECS agent).
const CONTAINER_RELATIVE_HOST: &str = "http://169.254.170.2";
/// Largest token file read, in bytes: 64 KiB (EKS service-account tokens are ~1 KiB).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
/// Longest region name accepted, in bytes (real ones are under 20; the cap bounds the host).
const MAX_REGION_LEN: usize = 64;

/// A configuration that cannot give credentials (found without contacting anything).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("incomplete AWS credentials in the environment: {0}")]
    PartialEnvCredentials(&'static str),
    #[error(
        "no AWS credentials: no environment credentials, web identity, profile or container \
         credentials are configured and the EC2 instance metadata service is disabled \
         (AWS_EC2_METADATA_DISABLED=true)"
    )]
    NoCredentialsImdsDisabled,
    #[error("invalid {name} {value:?}: {reason}")]
    InvalidSetting {
        name: &'static str,
        /// The value, or `<redacted>` for a secret.
        value: String,
        reason: &'static str,
    },
    #[error("AWS profile {profile:?} (shared config/credentials files): {error}")]
    Profile {
        profile: String,
        #[source]
        error: ProfileError,
    },
    #[error("profile credential_source = EcsContainer, but neither AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor AWS_CONTAINER_CREDENTIALS_FULL_URI is set")]
    NoContainerEndpoint,
}

/// Why no credentials (or region) could be had.
#[derive(Debug, thiserror::Error)]
pub enum AwsCredsError {
    #[error(transparent)]
    Config(Arc<ConfigError>),
    #[error(
        "no AWS region: AWS_REGION/AWS_DEFAULT_REGION are not set, the profile has no region \
         and the EC2 instance metadata service is disabled (AWS_EC2_METADATA_DISABLED=true)"
    )]
    NoRegionImdsDisabled,
    #[error(
        "invalid AWS region {0:?}: expected lowercase letters, digits and '-' (e.g. us-east-1)"
    )]
    InvalidRegion(String),
    #[error("{source_name}: cannot read {path}: {error}")]
    ReadFile {
        source_name: String,
        path: String,
        error: std::io::Error,
    },
    #[error("{source_name}: {path} is empty or not printable ASCII")]
    BadTokenFile { source_name: String, path: String },
    #[error("{source_name} at {endpoint} ({what}): {error}")]
    Fetch {
        source_name: String,
        endpoint: String,
        what: &'static str,
        #[source]
        error: Box<FetchError>,
    },
}

impl From<ConfigError> for AwsCredsError {
    fn from(e: ConfigError) -> Self {
        Self::Config(Arc::new(e))
    }
}

enum EnvCredentials {
    Absent,
    Complete(Credentials),
    Partial(&'static str),
}

#[derive(Clone)]
enum ImdsSetting {
    Disabled,
    Enabled(Endpoint),
    Invalid(Arc<ConfigError>),
}

/// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (or a profile's equivalent).
#[derive(Debug, Clone)]
struct WebIdentity {
    role_arn: String,
    token_file: PathBuf,
    session_name: Option<String>,
}

/// The container credentials endpoint and its authorization.
#[derive(Clone)]
struct Container {
    endpoint: Endpoint,
    auth: ContainerAuth,
}

#[derive(Clone)]
enum ContainerAuth {
    None,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (a secret).
    Token(String),
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, re-read on every fetch.
    File(PathBuf),
}

/// The source [`CredentialChain::select`] picked.
enum Selected<'a> {
    Env(&'a Credentials),
    WebIdentity(&'a WebIdentity),
    Profile(&'a str, ProfilePlan),
    Container(&'a Container),
    Imds(&'a Endpoint),
}

impl Selected<'_> {
    fn describe(&self) -> String {
        match self {
            Selected::Env(_) => "environment variables".to_string(),
            Selected::WebIdentity(_) => "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)".to_string(),
            Selected::Profile(name, _) => format!("AWS profile {name:?}"),
            Selected::Container(c) => format!("container credentials at {}", c.endpoint.display),
            Selected::Imds(ep) => format!("EC2 instance role via {}", ep.display),
        }
    }
}

struct Cache {
    creds: Option<Credentials>,
    /// When the last "refresh failed, keeping cached credentials" warning was logged.
    last_warn: Option<i64>,
}

/// Where AWS credentials and the region come from (see the module docs for the order).
/// Temporary credentials are cached and refreshed [`CREDENTIAL_REFRESH_MARGIN_SECS`] before
/// they expire; a refresh that fails while the cached ones are still valid keeps them.
pub struct CredentialChain {
    env: EnvCredentials,
    web_identity: Option<Result<WebIdentity, Arc<ConfigError>>>,
    profile_name: String,
    profile_explicit: bool,
    profiles: Result<ProfileSet, Arc<ConfigError>>,
    container: Option<Result<Container, Arc<ConfigError>>>,
    imds: ImdsSetting,
    env_region: Option<String>,
    sts_override: Option<Result<Endpoint, Arc<ConfigError>>>,
    cache: Mutex<Cache>,
    region_cache: Mutex<Option<String>>,
}

impl fmt::Debug for CredentialChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.select() {
            Ok(s) => s.describe(),
            Err(e) => format!("error: {e}"),
        };
        f.debug_struct("CredentialChain")
            .field("source", &source)
            .field("env_region", &self.env_region)
            .finish_non_exhaustive()
    }
}

fn config_err(e: ConfigError) -> Arc<ConfigError> {
    Arc::new(e)
}

impl CredentialChain {
    /// Reads the configuration through `env` (a variable lookup, e.g. `std::env::var(k).ok()`)
    /// and the shared files it points at. Empty values count as unset. Nothing is fetched
    /// until [`Self::credentials`] or [`Self::region`].
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
        let web_identity =
            get("AWS_WEB_IDENTITY_TOKEN_FILE").map(|file| match get("AWS_ROLE_ARN") {
                Some(role_arn) => Ok(WebIdentity {
                    role_arn,
                    token_file: PathBuf::from(file),
                    session_name: get("AWS_ROLE_SESSION_NAME"),
                }),
                None => Err(config_err(ConfigError::InvalidSetting {
                    name: "AWS_ROLE_ARN",
                    value: String::new(),
                    reason: "must be set together with AWS_WEB_IDENTITY_TOKEN_FILE",
                })),
            });
        let explicit_profile = get("AWS_PROFILE");
        let profile_name = explicit_profile
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let (config_file, credentials_file) = aws_profile::file_paths(&get);
        let profiles = ProfileSet::load(config_file.as_deref(), credentials_file.as_deref())
            .map_err(|error| {
                config_err(ConfigError::Profile {
                    profile: profile_name.clone(),
                    error,
                })
            });
        let disabled =
            get("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let imds = if disabled {
            ImdsSetting::Disabled
        } else {
            let value = get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_string());
            match parse_imds_endpoint(&value) {
                Ok(ep) => ImdsSetting::Enabled(ep),
                Err(reason) => ImdsSetting::Invalid(config_err(ConfigError::InvalidSetting {
                    name: "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    value,
                    reason,
                })),
            }
        };
        let ignore_endpoints = get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let sts_override = if ignore_endpoints {
            None
        } else {
            [("AWS_ENDPOINT_URL_STS"), ("AWS_ENDPOINT_URL")]
                .into_iter()
                .find_map(|name| get(name).map(|v| (name, v)))
                .map(|(name, value)| parse_sts_endpoint(name, &value))
        };
        Self {
            env: env_credentials,
            web_identity,
            profile_explicit: explicit_profile.is_some(),
            profile_name,
            profiles,
            container: container_setting(&get),
            imds,
            env_region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
            sts_override,
            cache: Mutex::new(Cache {
                creds: None,
                last_warn: None,
            }),
            region_cache: Mutex::new(None),
        }
    }

    /// [`Self::from_env`] over the process environment.
    pub fn from_process_env() -> Self {
        Self::from_env(&|name| std::env::var(name).ok())
    }

    /// Which source applies, or why the configuration cannot work (no network).
    fn select(&self) -> Result<Selected<'_>, AwsCredsError> {
        match &self.env {
            EnvCredentials::Complete(c) => return Ok(Selected::Env(c)),
            EnvCredentials::Partial(msg) => {
                return Err(ConfigError::PartialEnvCredentials(msg).into())
            }
            EnvCredentials::Absent => {}
        }
        if let Some(w) = &self.web_identity {
            return w
                .as_ref()
                .map(Selected::WebIdentity)
                .map_err(|e| AwsCredsError::Config(e.clone()));
        }
        let profiles = self
            .profiles
            .as_ref()
            .map_err(|e| AwsCredsError::Config(e.clone()))?;
        if self.profile_explicit || profiles.has_credentials(&self.profile_name) {
            return profiles
                .resolve(&self.profile_name)
                .map(|plan| Selected::Profile(&self.profile_name, plan))
                .map_err(|error| {
                    ConfigError::Profile {
                        profile: self.profile_name.clone(),
                        error,
                    }
                    .into()
                });
        }
        if let Some(c) = &self.container {
            return c
                .as_ref()
                .map(Selected::Container)
                .map_err(|e| AwsCredsError::Config(e.clone()));
        }
        self.imds_endpoint()
            .map(Selected::Imds)
            .map_err(|e| e.unwrap_or_else(|| ConfigError::NoCredentialsImdsDisabled.into()))
    }

    /// Checks the configuration without contacting anything: the error a first fetch would
    /// give for a missing or broken setup (partial environment keys, an unsupported or
    /// cyclic profile, a bad endpoint), and a description of the source that will be used.
    pub fn check(&self) -> Result<String, AwsCredsError> {
        self.select().map(|s| s.describe())
    }

    /// Current credentials (cached; refetched within the refresh margin of expiry — if that
    /// refetch fails while the cached ones are still valid, the cached ones are returned and a
    /// rate-limited warning logged). Blocks on the source for at most its timeouts.
    pub fn credentials(&self) -> Result<Credentials, AwsCredsError> {
        self.credentials_at(now_epoch_secs())
    }

    /// [`Self::credentials`] at Unix time `now` (tests inject the clock here).
    pub(super) fn credentials_at(&self, now: i64) -> Result<Credentials, AwsCredsError> {
        let selected = self.select()?;
        if let Selected::Env(c) = selected {
            return Ok(c.clone());
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.creds.as_ref() {
            let fresh = c
                .expiration_epoch_secs
                .is_none_or(|exp| now < exp.saturating_sub(CREDENTIAL_REFRESH_MARGIN_SECS));
            if fresh {
                return Ok(c.clone());
            }
        }
        match self.fetch(&selected, now) {
            Ok(c) => {
                tracing::info!(
                    source = %selected.describe(),
                    access_key_id = %c.access_key_id,
                    expires = %c.expiration_epoch_secs.map(format_iso8601).unwrap_or_default(),
                    "fetched AWS credentials for MSK IAM"
                );
                cache.creds = Some(c.clone());
                cache.last_warn = None;
                Ok(c)
            }
            Err(err) => {
                let Some(c) = cache
                    .creds
                    .as_ref()
                    .filter(|c| c.expiration_epoch_secs.is_none_or(|exp| now < exp))
                    .cloned()
                else {
                    return Err(err);
                };
                let due = cache
                    .last_warn
                    .is_none_or(|t| now.saturating_sub(t) >= REFRESH_WARN_INTERVAL_SECS);
                if due {
                    cache.last_warn = Some(now);
                    tracing::warn!(
                        error = %err,
                        expires = %c.expiration_epoch_secs.map(format_iso8601).unwrap_or_default(),
                        "AWS credential refresh failed; using the cached credentials until they expire (retried on every token request)"
                    );
                } else {
                    tracing::debug!(error = %err, "AWS credential refresh failed again");
                }
                Ok(c)
            }
        }
    }

    fn fetch(&self, selected: &Selected<'_>, now: i64) -> Result<Credentials, AwsCredsError> {
        match selected {
            Selected::Env(c) => Ok((*c).clone()),
            Selected::WebIdentity(w) => self.assume_role_with_web_identity(w, now),
            Selected::Profile(_, plan) => self.fetch_profile(plan, now),
            Selected::Container(c) => fetch_container_credentials(c, now),
            Selected::Imds(ep) => {
                fetch_instance_credentials(ep, now).map_err(|error| AwsCredsError::Fetch {
                    source_name: "EC2 instance metadata service".to_string(),
                    endpoint: ep.display.clone(),
                    what: "fetching instance role credentials",
                    error: Box::new(error),
                })
            }
        }
    }

    fn fetch_profile(&self, plan: &ProfilePlan, now: i64) -> Result<Credentials, AwsCredsError> {
        let mut creds = match &plan.base {
            BaseCredentials::Static(c) => c.clone(),
            BaseCredentials::WebIdentity {
                role_arn,
                token_file,
                session_name,
            } => self.assume_role_with_web_identity(
                &WebIdentity {
                    role_arn: role_arn.clone(),
                    token_file: token_file.clone(),
                    session_name: session_name.clone(),
                },
                now,
            )?,
            BaseCredentials::Source(CredentialSource::Environment) => match &self.env {
                EnvCredentials::Complete(c) => c.clone(),
                EnvCredentials::Partial(msg) => {
                    return Err(ConfigError::PartialEnvCredentials(msg).into())
                }
                EnvCredentials::Absent => {
                    return Err(ConfigError::PartialEnvCredentials(
                        "credential_source = Environment, but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set",
                    )
                    .into())
                }
            },
            BaseCredentials::Source(CredentialSource::EcsContainer) => match &self.container {
                Some(Ok(c)) => fetch_container_credentials(c, now)?,
                Some(Err(e)) => return Err(AwsCredsError::Config(e.clone())),
                None => return Err(ConfigError::NoContainerEndpoint.into()),
            },
            BaseCredentials::Source(CredentialSource::Ec2InstanceMetadata) => {
                let ep = self
                    .imds_endpoint()
                    .map_err(|e| e.unwrap_or_else(|| ConfigError::NoCredentialsImdsDisabled.into()))?;
                fetch_instance_credentials(ep, now).map_err(|error| AwsCredsError::Fetch {
                    source_name: "EC2 instance metadata service".to_string(),
                    endpoint: ep.display.clone(),
                    what: "fetching instance role credentials",
                    error: Box::new(error),
                })?
            }
        };
        for step in &plan.roles {
            creds = self.assume_role(step, &creds, now)?;
        }
        Ok(creds)
    }

    /// The region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, else the
    /// metadata service's (looked up once, then cached).
    pub fn region(&self) -> Result<String, AwsCredsError> {
        let mut cached = self.region_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cached.as_ref() {
            return Ok(r.clone());
        }
        let region = self.lookup_region()?;
        if !valid_region(&region) {
            return Err(AwsCredsError::InvalidRegion(
                region.chars().take(128).collect(),
            ));
        }
        *cached = Some(region.clone());
        Ok(region)
    }

    fn lookup_region(&self) -> Result<String, AwsCredsError> {
        if let Some(r) = &self.env_region {
            return Ok(r.clone());
        }
        let profiles = self
            .profiles
            .as_ref()
            .map_err(|e| AwsCredsError::Config(e.clone()))?;
        if let Some(r) = profiles
            .get(&self.profile_name)
            .and_then(|p| p.get("region"))
        {
            return Ok(r.trim().to_string());
        }
        let ep = self
            .imds_endpoint()
            .map_err(|e| e.unwrap_or(AwsCredsError::NoRegionImdsDisabled))?;
        fetch_region(ep).map_err(|error| AwsCredsError::Fetch {
            source_name: "EC2 instance metadata service".to_string(),
            endpoint: ep.display.clone(),
            what: "fetching the region",
            error: Box::new(error),
        })
    }

    /// The metadata endpoint; `Err(None)` when disabled.
    fn imds_endpoint(&self) -> Result<&Endpoint, Option<AwsCredsError>> {
        match &self.imds {
            ImdsSetting::Enabled(ep) => Ok(ep),
            ImdsSetting::Disabled => Err(None),
            ImdsSetting::Invalid(e) => Err(Some(AwsCredsError::Config(e.clone()))),
        }
    }

    /// The STS endpoint: the override, else the regional endpoint.
    fn sts_endpoint(&self, region: &str) -> Result<Endpoint, AwsCredsError> {
        match &self.sts_override {
            Some(Ok(ep)) => Ok(ep.clone()),
            Some(Err(e)) => Err(AwsCredsError::Config(e.clone())),
            None => {
                Endpoint::parse(&format!("https://sts.{region}.amazonaws.com")).map_err(|reason| {
                    ConfigError::InvalidSetting {
                        name: "region",
                        value: region.to_string(),
                        reason,
                    }
                    .into()
                })
            }
        }
    }

    fn assume_role_with_web_identity(
        &self,
        w: &WebIdentity,
        now: i64,
    ) -> Result<Credentials, AwsCredsError> {
        let source_name = format!("STS AssumeRoleWithWebIdentity for {}", w.role_arn);
        let token = read_token_file(&w.token_file, &source_name)?;
        let region = self.region()?;
        let ep = self.sts_endpoint(&region)?;
        let session = session_name(w.session_name.as_deref(), now);
        let body = form_body(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", STS_API_VERSION),
            ("RoleArn", &w.role_arn),
            ("RoleSessionName", &session),
            ("WebIdentityToken", &token),
        ]);
        let req = Request {
            method: "POST",
            path: "/",
            headers: &[("Content-Type", FORM_CONTENT_TYPE)],
            body: body.as_bytes(),
        };
        sts_call(&ep, &req, now).map_err(|error| AwsCredsError::Fetch {
            source_name,
            endpoint: ep.display.clone(),
            what: "assuming the role",
            error: Box::new(error),
        })
    }

    /// STS `AssumeRole` with `source` credentials, signed with SigV4 in the headers.
    fn assume_role(
        &self,
        step: &RoleStep,
        source: &Credentials,
        now: i64,
    ) -> Result<Credentials, AwsCredsError> {
        let region = self.region()?;
        let ep = self.sts_endpoint(&region)?;
        let session = session_name(step.session_name.as_deref(), now);
        let duration = step.duration_secs.map(|d| d.to_string());
        let mut params: Vec<(&str, &str)> = vec![
            ("Action", "AssumeRole"),
            ("Version", STS_API_VERSION),
            ("RoleArn", &step.role_arn),
            ("RoleSessionName", &session),
        ];
        if let Some(id) = step.external_id.as_deref() {
            params.push(("ExternalId", id));
        }
        if let Some(d) = duration.as_deref() {
            params.push(("DurationSeconds", d));
        }
        let body = form_body(&params);
        let (_, amz_date) = sigv4::amz_date_and_timestamp(now);
        let mut signed: Vec<(&str, &str)> = vec![
            ("Content-Type", FORM_CONTENT_TYPE),
            ("Host", &ep.authority),
            ("X-Amz-Date", &amz_date),
        ];
        if let Some(t) = source.session_token.as_deref() {
            signed.push(("X-Amz-Security-Token", t));
        }
        let authorization = sigv4::authorization_header(
            &sigv4::Signer {
                access_key_id: &source.access_key_id,
                secret_access_key: &source.secret_access_key,
                region: &region,
                service: "sts",
                now_epoch_secs: now,
            },
            &sigv4::HeaderSignedRequest {
                method: "POST",
                canonical_uri: "/",
                canonical_query: "",
                headers: &signed,
                payload: body.as_bytes(),
            },
        );
        // Everything signed but `Host` (the client sends that one, with the same value).
        let mut headers: Vec<(&str, &str)> =
            signed.into_iter().filter(|(n, _)| *n != "Host").collect();
        headers.push(("Authorization", &authorization));
        let req = Request {
            method: "POST",
            path: "/",
            headers: &headers,
            body: body.as_bytes(),
        };
        sts_call(&ep, &req, now).map_err(|error| AwsCredsError::Fetch {
            source_name: format!(
                "STS AssumeRole for {} (profile {:?})",
                step.role_arn, step.profile
            ),
            endpoint: ep.display.clone(),
            what: "assuming the role",
            error: Box::new(error),
        })
    }
}

/// Whether `region` can be put in a host name: lowercase letters, digits and `-`.
pub(super) fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= MAX_REGION_LEN
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn now_epoch_secs() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn session_name(configured: Option<&str>, now: i64) -> String {
    match configured {
        Some(s) => s.to_string(),
        None => format!("capture-proxy-{now}"),
    }
}

/// A token file's content, trimmed; it goes into a request, so it must be printable ASCII.
fn read_token_file(path: &Path, source_name: &str) -> Result<String, AwsCredsError> {
    let read = || -> std::io::Result<String> {
        let file = std::fs::File::open(path)?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(file, MAX_TOKEN_FILE_BYTES),
            &mut text,
        )?;
        Ok(text)
    };
    let text = read().map_err(|error| AwsCredsError::ReadFile {
        source_name: source_name.to_string(),
        path: path.display().to_string(),
        error,
    })?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(AwsCredsError::BadTokenFile {
            source_name: source_name.to_string(),
            path: path.display().to_string(),
        });
    }
    Ok(token.to_string())
}

fn parse_imds_endpoint(value: &str) -> Result<Endpoint, &'static str> {
    let ep = Endpoint::parse(value)?;
    if ep.https {
        return Err("only http://host[:port] endpoints are supported");
    }
    if ep.path != "/" {
        return Err("a path after host[:port] is not supported");
    }
    Ok(ep)
}

fn parse_sts_endpoint(name: &'static str, value: &str) -> Result<Endpoint, Arc<ConfigError>> {
    let invalid = |reason| {
        config_err(ConfigError::InvalidSetting {
            name,
            value: value.to_string(),
            reason,
        })
    };
    let ep = Endpoint::parse(value).map_err(invalid)?;
    if ep.path != "/" {
        return Err(invalid("a path after host[:port] is not supported"));
    }
    Ok(ep)
}

/// The container endpoint settings, if any: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` wins
/// over `AWS_CONTAINER_CREDENTIALS_FULL_URI`; the token file over the token.
fn container_setting(
    get: &dyn Fn(&str) -> Option<String>,
) -> Option<Result<Container, Arc<ConfigError>>> {
    let endpoint = if let Some(rel) = get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        let invalid = |reason| {
            config_err(ConfigError::InvalidSetting {
                name: "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                value: rel.clone(),
                reason,
            })
        };
        if !rel.starts_with('/') {
            return Some(Err(invalid("must start with '/'")));
        }
        Endpoint::parse(&format!("{CONTAINER_RELATIVE_HOST}{rel}")).map_err(invalid)
    } else {
        let full = get("AWS_CONTAINER_CREDENTIALS_FULL_URI")?;
        let invalid = |reason| {
            config_err(ConfigError::InvalidSetting {
                name: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                value: full.clone(),
                reason,
            })
        };
        match Endpoint::parse(&full) {
            Ok(ep) if !ep.https && !allowed_container_host(&ep.host) => Err(invalid(
                "plain http is only allowed to loopback, 169.254.170.2, 169.254.170.23 or \
                 fd00:ec2::23 (use https for other hosts)",
            )),
            Ok(ep) => Ok(ep),
            Err(reason) => Err(invalid(reason)),
        }
    };
    let endpoint = match endpoint {
        Ok(ep) => ep,
        Err(e) => return Some(Err(e)),
    };
    let auth = if let Some(file) = get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        ContainerAuth::File(PathBuf::from(file))
    } else if let Some(token) = get("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
        if !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Some(Err(config_err(ConfigError::InvalidSetting {
                name: "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                value: "<redacted>".to_string(),
                reason: "must be printable ASCII",
            })));
        }
        ContainerAuth::Token(token)
    } else {
        ContainerAuth::None
    };
    Some(Ok(Container { endpoint, auth }))
}

fn fetch_container_credentials(c: &Container, now: i64) -> Result<Credentials, AwsCredsError> {
    let source_name = "container credentials endpoint".to_string();
    let token = match &c.auth {
        ContainerAuth::None => None,
        ContainerAuth::Token(t) => Some(t.clone()),
        ContainerAuth::File(path) => Some(read_token_file(path, &source_name)?),
    };
    aws_sources::fetch_container_credentials(&c.endpoint, token.as_deref(), now).map_err(|error| {
        AwsCredsError::Fetch {
            source_name,
            endpoint: c.endpoint.display.clone(),
            what: "fetching credentials",
            error: Box::new(error),
        }
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use super::aws_sources::{IMDS_REGION_PATH, IMDS_ROLES_PATH, IMDS_TIMEOUTS, IMDS_TOKEN_PATH};
    use crate::kafka::aws_http::HttpError;

    // ---- A fake HTTP endpoint on 127.0.0.1 ---------------------------------------------------

    /// How long a fake server lives at most, whatever the test does (bounds its loop).
    const FAKE_SERVER_MAX_LIFE: Duration = Duration::from_secs(30);

    /// One request as the fake server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        /// Lowercase name → value.
        headers: HashMap<String, String>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(String::as_str)
        }
        /// The form-encoded body's parameters, decoded.
        fn form(&self) -> HashMap<String, String> {
            self.body
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect()
        }
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() + 1 {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    type Handler = Box<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

    pub(in crate::kafka) struct Fake {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    }

    impl Fake {
        /// Serves every request with `handler`; bodies over 64 bytes go out chunked.
        fn start(handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> Self {
            Self::spawn(Some(Box::new(handler)))
        }

        /// Accepts connections and never answers.
        fn hanging() -> Self {
            Self::spawn(None)
        }

        fn spawn(handler: Option<Handler>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (s2, stop2) = (seen.clone(), stop.clone());
            let handle = std::thread::spawn(move || {
                let started = Instant::now();
                let mut held = Vec::new();
                while !stop2.load(Ordering::SeqCst) && started.elapsed() < FAKE_SERVER_MAX_LIFE {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    match &handler {
                        None => held.push(stream),
                        Some(h) => serve_one(stream, h, &s2),
                    }
                }
            });
            Self {
                addr,
                seen,
                stop,
                handle: Some(handle),
            }
        }

        pub(in crate::kafka) fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    fn serve_one(mut stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
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
        let len: usize = headers
            .get("content-length")
            .map_or(0, |v| v.parse().unwrap());
        while buf.len() < head_end + 4 + len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let req = Seen {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + len]).to_string(),
        };
        assert!(req.headers.contains_key("host"));
        seen.lock().unwrap().push(req.clone());
        let (status, body) = handler(&req);
        let mut resp = format!("HTTP/1.1 {status} X\r\nConnection: close\r\nServer: fake\r\n");
        if body.len() > 64 {
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

    pub(in crate::kafka) fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn chain(vars: &[(&str, &str)]) -> CredentialChain {
        CredentialChain::from_env(&env_of(vars))
    }

    /// An address on loopback where nothing listens (bound, then released).
    pub(in crate::kafka) fn dead_endpoint() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        format!("http://{addr}")
    }

    fn config_error(err: &AwsCredsError) -> &ConfigError {
        match err {
            AwsCredsError::Config(c) => c,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    const EXP: i64 = 1_893_456_000; // 2030-01-01T00:00:00Z

    // ---- Fake IMDSv2 -------------------------------------------------------------------------

    const FAKE_SESSION_TOKEN: &str = "FAKE-IMDS-SESSION-TOKEN";
    const FAKE_ROLE: &str = "capture-proxy-role";

    #[derive(Default)]
    pub(in crate::kafka) struct ImdsState {
        unauthorized: AtomicUsize,
        creds_served: AtomicUsize,
        fail_creds: AtomicBool,
    }

    pub(in crate::kafka) fn fake_imds(expiration: &str, region: &str) -> (Fake, Arc<ImdsState>) {
        let state = Arc::new(ImdsState::default());
        let st = state.clone();
        let (expiration, region) = (expiration.to_string(), region.to_string());
        let fake = Fake::start(move |r| {
            let authorized = r.header("x-aws-ec2-metadata-token") == Some(FAKE_SESSION_TOKEN);
            if r.method == "PUT" && r.path == IMDS_TOKEN_PATH {
                return if r.header("x-aws-ec2-metadata-token-ttl-seconds") == Some("21600") {
                    (200, FAKE_SESSION_TOKEN.to_string())
                } else {
                    (400, String::new())
                };
            }
            if r.method != "GET" || !authorized {
                st.unauthorized.fetch_add(1, Ordering::SeqCst);
                return (401, String::new());
            }
            if r.path == IMDS_ROLES_PATH {
                (200, format!("{FAKE_ROLE}\n"))
            } else if r.path == format!("{IMDS_ROLES_PATH}{FAKE_ROLE}") {
                if st.fail_creds.load(Ordering::SeqCst) {
                    return (500, String::new());
                }
                let n = st.creds_served.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    200,
                    format!(
                        r#"{{"Code":"Success","LastUpdated":"2024-03-01T12:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAFAKE{n}","SecretAccessKey":"fake/secret+{n}","Token":"fake-session-token-{n}","Expiration":"{expiration}"}}"#
                    ),
                )
            } else if r.path == IMDS_REGION_PATH {
                (200, region.clone())
            } else {
                (404, String::new())
            }
        });
        (fake, state)
    }

    // ---- Fake STS ----------------------------------------------------------------------------

    #[derive(Default)]
    struct StsState {
        calls: AtomicUsize,
        fail: AtomicBool,
    }

    /// Answers `AssumeRoleWithWebIdentity` (unsigned) and `AssumeRole` (which must carry a
    /// well-formed SigV4 `Authorization` header) with credentials `STS{action}{n}` expiring
    /// at `expiration`; anything else gets an STS error document.
    fn fake_sts(expiration: &str) -> (Fake, Arc<StsState>) {
        let state = Arc::new(StsState::default());
        let st = state.clone();
        let expiration = expiration.to_string();
        let fake = Fake::start(move |r| {
            let form = r.form();
            let action = form.get("Action").cloned().unwrap_or_default();
            let ok_shape = r.method == "POST"
                && r.path == "/"
                && r.header("content-type") == Some(FORM_CONTENT_TYPE)
                && form.get("Version").map(String::as_str) == Some(STS_API_VERSION)
                && form
                    .get("RoleArn")
                    .is_some_and(|a| a.starts_with("arn:aws:iam::"))
                && form.contains_key("RoleSessionName");
            let ok_auth = match action.as_str() {
                "AssumeRoleWithWebIdentity" => {
                    form.contains_key("WebIdentityToken") && r.header("authorization").is_none()
                }
                "AssumeRole" => {
                    r.header("authorization").is_some_and(well_formed_sigv4)
                        && r.header("x-amz-date").is_some_and(|d| d.len() == 16)
                }
                _ => false,
            };
            if st.fail.load(Ordering::SeqCst) || !ok_shape || !ok_auth {
                return (
                    403,
                    "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
                     <Type>Sender</Type><Code>AccessDenied</Code><Message>Not authorized &amp; \
                     denied</Message></Error><RequestId>r</RequestId></ErrorResponse>"
                        .to_string(),
                );
            }
            let n = st.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let short = if action == "AssumeRole" { "AR" } else { "WI" };
            (
                200,
                format!(
                    "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                     <{action}Result><Credentials>\
                     <AccessKeyId>ASIASTS{short}{n}</AccessKeyId>\
                     <SecretAccessKey>sts/secret+{n}</SecretAccessKey>\
                     <SessionToken>sts-token-{n}&amp;x</SessionToken>\
                     <Expiration>{expiration}</Expiration>\
                     </Credentials><AssumedRoleUser><Arn>a</Arn></AssumedRoleUser>\
                     </{action}Result></{action}Response>"
                ),
            )
        });
        (fake, state)
    }

    /// `AWS4-HMAC-SHA256 Credential=KEY/YYYYMMDD/REGION/sts/aws4_request,
    /// SignedHeaders=a;b;c, Signature=<64 hex>` with host and x-amz-date signed.
    fn well_formed_sigv4(h: &str) -> bool {
        let Some(rest) = h.strip_prefix("AWS4-HMAC-SHA256 Credential=") else {
            return false;
        };
        let parts: Vec<&str> = rest.split(", ").collect();
        let [cred, signed, sig] = parts[..] else {
            return false;
        };
        let scope: Vec<&str> = cred.split('/').collect();
        scope.len() == 5
            && scope[1].len() == 8
            && scope[3] == "sts"
            && scope[4] == "aws4_request"
            && signed
                .strip_prefix("SignedHeaders=")
                .is_some_and(|s| s.split(';').any(|x| x == "host") && s.contains("x-amz-date"))
            && sig.strip_prefix("Signature=").is_some_and(|s| {
                s.len() == 64
                    && s.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
    }

    // ---- Fake container endpoint --------------------------------------------------------------

    #[derive(Default)]
    struct ContainerState {
        served: AtomicUsize,
        fail: AtomicBool,
    }

    /// Serves `GET /creds` when `Authorization` equals the current `expected` token.
    fn fake_container(
        expiration: &str,
        expected: Arc<Mutex<String>>,
    ) -> (Fake, Arc<ContainerState>) {
        let state = Arc::new(ContainerState::default());
        let st = state.clone();
        let expiration = expiration.to_string();
        let fake = Fake::start(move |r| {
            if r.method != "GET" || r.path != "/creds" {
                return (404, String::new());
            }
            if r.header("authorization") != Some(expected.lock().unwrap().as_str()) {
                return (401, String::new());
            }
            if st.fail.load(Ordering::SeqCst) {
                return (500, String::new());
            }
            let n = st.served.fetch_add(1, Ordering::SeqCst) + 1;
            (
                200,
                format!(
                    r#"{{"AccessKeyId":"ASIACONT{n}","SecretAccessKey":"cont/secret{n}","Token":"cont-token-{n}","AccountId":"123456789012","Expiration":"{expiration}"}}"#
                ),
            )
        });
        (fake, state)
    }

    // ---- Parsing ------------------------------------------------------------------------------

    #[test]
    fn container_settings() {
        let c = container_setting(&env_of(&[
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/abc?x=1",
            ),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:1/ignored",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.connect_to, "169.254.170.2:80");
        assert_eq!(c.endpoint.path, "/v2/credentials/abc?x=1");
        assert!(matches!(c.auth, ContainerAuth::None));
        for ok in [
            "http://127.0.0.1:8080/creds",
            "http://127.9.9.9/creds",
            "http://localhost/creds",
            "http://[::1]:80/creds",
            "http://169.254.170.2/v1/credentials",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "https://creds.example.com/anything",
        ] {
            let c = container_setting(&env_of(&[
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", ok),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer abc"),
            ]));
            assert!(matches!(c, Some(Ok(_))), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/creds",
            "http://169.254.169.254/latest",
            "http://example.com/creds",
            "http://[fd00:ec2::24]/",
            "ftp://127.0.0.1/",
        ] {
            let c = container_setting(&env_of(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", bad)]));
            assert!(matches!(c, Some(Err(_))), "{bad}");
        }
        let c = container_setting(&env_of(&[(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "v2/x",
        )]));
        assert!(matches!(c, Some(Err(_))));
        // The token file wins over the token; a token with a line break is refused, unshown.
        let c = container_setting(&env_of(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/c"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/run/token"),
        ]));
        assert!(matches!(
            c,
            Some(Ok(Container {
                auth: ContainerAuth::File(_),
                ..
            }))
        ));
        let Some(Err(e)) = container_setting(&env_of(&[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/c"),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "secret\r\nX-Injected: 1",
            ),
        ])) else {
            panic!("expected an error")
        };
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(container_setting(&env_of(&[])).is_none());
    }

    // ---- Environment and chain order ---------------------------------------------------------

    #[test]
    fn env_credentials_take_precedence_over_every_other_source() {
        let (imds, _) = fake_imds("2030-01-01T00:00:00Z", "eu-west-1");
        let (sts, _) = fake_sts("2030-01-01T00:00:00Z");
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "web-token").unwrap();
        let creds_file = dir.path().join("credentials");
        std::fs::write(
            &creds_file,
            "[default]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = s\n",
        )
        .unwrap();
        let everything = [
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "envtoken"),
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "eu-north-1"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url()),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/web"),
            ("AWS_ENDPOINT_URL_STS", &sts.url()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds_file.to_str().unwrap()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:1/creds",
            ),
        ];
        let chain = chain(&everything);
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
        assert_eq!(chain.check().unwrap(), "environment variables");
        assert_eq!(chain.region().unwrap(), "us-west-2");
        assert!(imds.seen().is_empty() && sts.seen().is_empty());

        let chain = super::tests::chain(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", ""),
            ("AWS_DEFAULT_REGION", "eu-north-1"),
        ]);
        assert_eq!(chain.credentials().unwrap().session_token, None);
        assert_eq!(chain.region().unwrap(), "eu-north-1");
    }

    #[test]
    fn partial_env_credentials_are_an_error() {
        let chain = chain(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]);
        let err = chain.credentials().unwrap_err();
        assert!(matches!(
            config_error(&err),
            ConfigError::PartialEnvCredentials(_)
        ));
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    /// Web identity beats the profile, the profile beats the container endpoint, the
    /// container endpoint beats IMDS; a default profile without credentials is skipped.
    #[test]
    fn chain_order_of_the_other_sources() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "web-token").unwrap();
        let with_creds = dir.path().join("with");
        std::fs::write(
            &with_creds,
            "[default]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = s\n",
        )
        .unwrap();
        let region_only = dir.path().join("region-only");
        std::fs::write(&region_only, "[default]\nregion = ap-south-1\n").unwrap();
        let (t, w, r) = (
            token_file.to_str().unwrap(),
            with_creds.to_str().unwrap(),
            region_only.to_str().unwrap(),
        );
        let web = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", t),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/w"),
        ];
        let profile = [("AWS_SHARED_CREDENTIALS_FILE", w)];
        let container = [(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://127.0.0.1:1/creds",
        )];
        let imds = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:2")];
        let describe = |sets: &[&[(&str, &str)]]| {
            let vars: Vec<(&str, &str)> = sets.iter().flat_map(|s| s.iter().copied()).collect();
            chain(&vars).check().unwrap()
        };
        assert!(describe(&[&web, &profile, &container, &imds]).starts_with("web identity"));
        assert_eq!(
            describe(&[&profile, &container, &imds]),
            "AWS profile \"default\""
        );
        assert!(describe(&[&container, &imds])
            .starts_with("container credentials at http://127.0.0.1:1/creds"));
        assert!(describe(&[&[("AWS_CONFIG_FILE", r)], &container]).starts_with("container"));
        assert_eq!(
            describe(&[&imds]),
            "EC2 instance role via http://127.0.0.1:2"
        );
        // A named profile is used even when it is broken: its error, not the next source.
        let err = chain(&[
            ("AWS_PROFILE", "nope"),
            ("AWS_SHARED_CREDENTIALS_FILE", w),
            container[0],
        ])
        .check()
        .unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        // The region comes from the profile after the environment.
        let c = chain(&[("AWS_CONFIG_FILE", r), imds[0]]);
        assert_eq!(c.region().unwrap(), "ap-south-1");
        let c = chain(&[("AWS_CONFIG_FILE", r), ("AWS_REGION", "eu-west-3")]);
        assert_eq!(c.region().unwrap(), "eu-west-3");
    }

    // ---- Web identity ------------------------------------------------------------------------

    #[test]
    fn web_identity_via_sts_rereads_the_token_file() {
        let (sts, state) = fake_sts("2030-01-01T00:00:00Z");
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "eyJ-first-token\n").unwrap();
        let chain = chain(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/capture"),
            ("AWS_ROLE_SESSION_NAME", "my-session"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL_STS", &sts.url()),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"), // the STS-specific one wins
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]);
        let c = chain.credentials_at(EXP - 3600).unwrap();
        assert_eq!(c.access_key_id, "ASIASTSWI1");
        assert_eq!(c.secret_access_key, "sts/secret+1");
        assert_eq!(c.session_token.as_deref(), Some("sts-token-1&x"));
        assert_eq!(c.expiration_epoch_secs, Some(EXP));
        let seen = sts.seen();
        assert_eq!(seen.len(), 1);
        let form = seen[0].form();
        assert_eq!(form["Action"], "AssumeRoleWithWebIdentity");
        assert_eq!(form["RoleArn"], "arn:aws:iam::123456789012:role/capture");
        assert_eq!(form["RoleSessionName"], "my-session");
        assert_eq!(form["WebIdentityToken"], "eyJ-first-token");
        assert_eq!(seen[0].header("host"), Some(sts.addr.to_string().as_str()));
        // Cached outside the margin; inside it, refetched with the rotated token.
        chain
            .credentials_at(EXP - CREDENTIAL_REFRESH_MARGIN_SECS - 1)
            .unwrap();
        assert_eq!(state.calls.load(Ordering::SeqCst), 1);
        std::fs::write(&token_file, "eyJ-rotated-token").unwrap();
        let c = chain
            .credentials_at(EXP - CREDENTIAL_REFRESH_MARGIN_SECS)
            .unwrap();
        assert_eq!(c.access_key_id, "ASIASTSWI2");
        assert_eq!(
            sts.seen()[1].form()["WebIdentityToken"],
            "eyJ-rotated-token"
        );
    }

    #[test]
    fn web_identity_failures_are_typed_and_descriptive() {
        let err = chain(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")])
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("AWS_ROLE_ARN"), "{err}");

        let (sts, state) = fake_sts("2030-01-01T00:00:00Z");
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        let url = sts.url();
        let chain = chain(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", &url),
        ]);
        let err = chain.credentials().unwrap_err();
        assert!(matches!(err, AwsCredsError::ReadFile { .. }), "{err:?}");
        assert!(err.to_string().contains("token"), "{err}");
        std::fs::write(&token_file, "").unwrap();
        assert!(matches!(
            chain.credentials().unwrap_err(),
            AwsCredsError::BadTokenFile { .. }
        ));
        std::fs::write(&token_file, "secret-web-token").unwrap();
        state.fail.store(true, Ordering::SeqCst);
        let err = chain.credentials().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("STS AssumeRoleWithWebIdentity for arn:aws:iam::1:role/r")
                && msg.contains("403")
                && msg.contains("AccessDenied: Not authorized & denied"),
            "{msg}"
        );
        assert!(
            !msg.contains("secret-web-token") && !format!("{err:?}").contains("secret-web-token")
        );
    }

    #[test]
    fn sts_endpoint_defaults_to_regional_https() {
        let c = chain(&[("AWS_REGION", "eu-central-1")]);
        let ep = c.sts_endpoint("eu-central-1").unwrap();
        assert!(ep.https);
        assert_eq!(ep.connect_to, "sts.eu-central-1.amazonaws.com:443");
        let c = chain(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]);
        assert!(c.sts_endpoint("us-east-1").unwrap().https);
        let c = chain(&[("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9/path")]);
        assert!(c.sts_endpoint("us-east-1").is_err());
    }

    // ---- Shared files ------------------------------------------------------------------------

    #[test]
    fn profile_static_keys_and_region() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, creds) = (dir.path().join("config"), dir.path().join("credentials"));
        std::fs::write(&cfg, "[profile dev]\nregion = us-east-2\n").unwrap();
        std::fs::write(&creds, "[dev]\naws_access_key_id = AKIADEV\naws_secret_access_key = devsecret\naws_session_token = devtoken\n").unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".aws")).unwrap();
        std::fs::copy(&cfg, home.join(".aws/config")).unwrap();
        std::fs::copy(&creds, home.join(".aws/credentials")).unwrap();
        for vars in [
            vec![
                ("AWS_PROFILE", "dev"),
                ("AWS_CONFIG_FILE", cfg.to_str().unwrap()),
                ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ],
            vec![("AWS_PROFILE", "dev"), ("HOME", home.to_str().unwrap())],
        ] {
            let c = chain(&vars);
            let got = c.credentials().unwrap();
            assert_eq!(got.access_key_id, "AKIADEV");
            assert_eq!(got.session_token.as_deref(), Some("devtoken"));
            assert_eq!(got.expiration_epoch_secs, None);
            assert_eq!(c.region().unwrap(), "us-east-2");
            assert!(!format!("{c:?}").contains("devsecret"));
        }
        let err = chain(&[
            ("AWS_PROFILE", "sso"),
            ("AWS_CONFIG_FILE", cfg.to_str().unwrap()),
        ])
        .check()
        .unwrap_err();
        assert!(matches!(
            config_error(&err),
            ConfigError::Profile {
                error: ProfileError::NotFound(_),
                ..
            }
        ));
        std::fs::write(&cfg, "[profile sso]\nsso_session = corp\n").unwrap();
        let c = chain(&[
            ("AWS_PROFILE", "sso"),
            ("AWS_CONFIG_FILE", cfg.to_str().unwrap()),
        ]);
        let err = c.credentials().unwrap_err();
        assert!(err.to_string().contains("`sso_session`"), "{err}");
        assert!(matches!(
            config_error(&err),
            ConfigError::Profile {
                error: ProfileError::Unsupported {
                    key: "sso_session",
                    ..
                },
                ..
            }
        ));
        // An unsupported default profile is not skipped either.
        let c = chain(&[("AWS_CONFIG_FILE", cfg.to_str().unwrap())]);
        assert!(c.check().is_ok()); // `default` is absent: the chain moves on (to IMDS)
        std::fs::write(&cfg, "[default]\ncredential_process = /bin/x\n").unwrap();
        let c = chain(&[("AWS_CONFIG_FILE", cfg.to_str().unwrap())]);
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .contains("credential_process"));
        // A malformed file is an error naming the file and line.
        std::fs::write(&cfg, "[default]\nthis is not ini\n").unwrap();
        let err = chain(&[("AWS_CONFIG_FILE", cfg.to_str().unwrap())])
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    /// `app` assumes its role with the credentials of `hop`, which assumes its role with the
    /// static keys of `base`: two signed AssumeRole calls, the second signed with the first's
    /// result. The fake checks each `Authorization` header is well-formed; here the signature
    /// is recomputed from what the server received.
    #[test]
    fn profile_assume_role_chain_is_signed() {
        let (sts, state) = fake_sts("2030-01-01T00:00:00Z");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = hop\n\
             role_session_name = app-session\nexternal_id = ext-1\nregion = eu-west-1\n\
             [profile hop]\nrole_arn = arn:aws:iam::1:role/hop\nsource_profile = base\n\
             [profile base]\naws_access_key_id = AKIABASE\naws_secret_access_key = basesecret\n",
        )
        .unwrap();
        let chain = chain(&[
            ("AWS_PROFILE", "app"),
            ("AWS_CONFIG_FILE", cfg.to_str().unwrap()),
            ("AWS_ENDPOINT_URL_STS", &sts.url()),
        ]);
        let now = EXP - 7200;
        let c = chain.credentials_at(now).unwrap();
        assert_eq!(c.access_key_id, "ASIASTSAR2");
        assert_eq!(c.expiration_epoch_secs, Some(EXP));
        assert_eq!(state.calls.load(Ordering::SeqCst), 2);
        let seen = sts.seen();
        let (first, second) = (&seen[0], &seen[1]);
        assert_eq!(first.form()["RoleArn"], "arn:aws:iam::1:role/hop");
        assert!(first.form()["RoleSessionName"].starts_with("capture-proxy-"));
        assert!(first.header("x-amz-security-token").is_none());
        let auth1 = first.header("authorization").unwrap();
        assert!(auth1.starts_with("AWS4-HMAC-SHA256 Credential=AKIABASE/20291231/eu-west-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="), "{auth1}");
        assert_eq!(second.form()["RoleArn"], "arn:aws:iam::1:role/app");
        assert_eq!(second.form()["RoleSessionName"], "app-session");
        assert_eq!(second.form()["ExternalId"], "ext-1");
        assert_eq!(second.header("x-amz-security-token"), Some("sts-token-1&x"));
        let auth2 = second.header("authorization").unwrap();
        assert!(
            auth2.contains("Credential=ASIASTSAR1/")
                && auth2
                    .contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"),
            "{auth2}"
        );
        // Recompute the first signature from the request as received.
        let host = first.header("host").unwrap();
        let expected = sigv4::authorization_header(
            &sigv4::Signer {
                access_key_id: "AKIABASE",
                secret_access_key: "basesecret",
                region: "eu-west-1",
                service: "sts",
                now_epoch_secs: now,
            },
            &sigv4::HeaderSignedRequest {
                method: "POST",
                canonical_uri: "/",
                canonical_query: "",
                headers: &[
                    ("content-type", first.header("content-type").unwrap()),
                    ("host", host),
                    ("x-amz-date", first.header("x-amz-date").unwrap()),
                ],
                payload: first.body.as_bytes(),
            },
        );
        assert_eq!(auth1, expected);
    }

    #[test]
    fn profile_credential_sources() {
        let (sts, _) = fake_sts("2030-01-01T00:00:00Z");
        let expected = Arc::new(Mutex::new("Bearer cont".to_string()));
        let (cont, cstate) = fake_container("2030-01-01T00:00:00Z", expected);
        let (imds, istate) = fake_imds("2030-01-01T00:00:00Z", "eu-west-1");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        let token_file = dir.path().join("web");
        std::fs::write(&token_file, "profile-web-token").unwrap();
        std::fs::write(
            &cfg,
            format!(
                "[default]\nregion = eu-west-1\n\
                 [profile ecs]\nrole_arn = arn:aws:iam::1:role/ecs\ncredential_source = EcsContainer\n\
                 [profile ec2]\nrole_arn = arn:aws:iam::1:role/ec2\ncredential_source = Ec2InstanceMetadata\n\
                 [profile web]\nrole_arn = arn:aws:iam::1:role/web\nweb_identity_token_file = {}\n",
                token_file.display()
            ),
        )
        .unwrap();
        let base = [
            ("AWS_CONFIG_FILE", cfg.to_str().unwrap().to_string()),
            ("AWS_ENDPOINT_URL_STS", sts.url()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/creds", cont.url()),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "Bearer cont".to_string(),
            ),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
        ];
        let with = |profile: &str| {
            let mut v: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
            v.push(("AWS_PROFILE", profile));
            chain(&v)
        };
        let c = with("ecs").credentials().unwrap();
        assert_eq!(c.access_key_id, "ASIASTSAR1");
        assert_eq!(cstate.served.load(Ordering::SeqCst), 1);
        assert!(sts.seen()[0]
            .header("authorization")
            .unwrap()
            .contains("Credential=ASIACONT1/"));
        let c = with("ec2").credentials().unwrap();
        assert_eq!(c.access_key_id, "ASIASTSAR2");
        assert_eq!(istate.creds_served.load(Ordering::SeqCst), 1);
        let c = with("web").credentials().unwrap();
        assert_eq!(c.access_key_id, "ASIASTSWI3");
        assert_eq!(
            sts.seen()[2].form()["WebIdentityToken"],
            "profile-web-token"
        );
        // EcsContainer without a container endpoint: a clear error.
        let err = chain(&[
            ("AWS_CONFIG_FILE", cfg.to_str().unwrap()),
            ("AWS_PROFILE", "ecs"),
        ])
        .credentials()
        .unwrap_err();
        assert!(
            matches!(config_error(&err), ConfigError::NoContainerEndpoint),
            "{err}"
        );
    }

    // ---- Container ---------------------------------------------------------------------------

    #[test]
    fn container_credentials_with_token_file_reread() {
        let expected = Arc::new(Mutex::new("Bearer first".to_string()));
        let (cont, state) = fake_container("2030-01-01T00:00:00Z", expected.clone());
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("eks-pod-identity-token");
        std::fs::write(&token_file, "Bearer first\n").unwrap();
        let chain = chain(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                &format!("{}/creds", cont.url()),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.to_str().unwrap(),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer ignored"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &dead_endpoint()),
        ]);
        let c = chain.credentials_at(EXP - 3600).unwrap();
        assert_eq!(c.access_key_id, "ASIACONT1");
        assert_eq!(c.session_token.as_deref(), Some("cont-token-1"));
        assert_eq!(c.expiration_epoch_secs, Some(EXP));
        let seen = cont.seen();
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("GET", "/creds")
        );
        // Rotated token: re-read on the next fetch.
        *expected.lock().unwrap() = "Bearer second".to_string();
        std::fs::write(&token_file, "Bearer second").unwrap();
        let c = chain.credentials_at(EXP - 60).unwrap();
        assert_eq!(c.access_key_id, "ASIACONT2");
        assert_eq!(state.served.load(Ordering::SeqCst), 2);
        // A wrong token: the endpoint's 401, named.
        std::fs::write(&token_file, "Bearer wrong").unwrap();
        let err = chain.credentials_at(EXP).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("container credentials endpoint") && msg.contains("401"),
            "{msg}"
        );
        assert!(!msg.contains("Bearer"));
    }

    // ---- IMDS --------------------------------------------------------------------------------

    #[test]
    fn imds_credentials_and_region() {
        let (imds, state) = fake_imds("2030-01-01T00:00:00Z", "eu-west-1");
        let chain = chain(&[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url()),
        ]);
        let c = chain.credentials().unwrap();
        assert_eq!(c.access_key_id, "ASIAFAKE1");
        assert_eq!(c.secret_access_key, "fake/secret+1");
        assert_eq!(c.session_token.as_deref(), Some("fake-session-token-1"));
        assert_eq!(c.expiration_epoch_secs, Some(EXP));
        assert_eq!(chain.region().unwrap(), "eu-west-1");
        let requests: Vec<String> = imds
            .seen()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert_eq!(
            requests,
            [
                "PUT /latest/api/token",
                "GET /latest/meta-data/iam/security-credentials/",
                "GET /latest/meta-data/iam/security-credentials/capture-proxy-role",
                "PUT /latest/api/token",
                "GET /latest/meta-data/placement/region",
            ]
        );
        assert_eq!(state.unauthorized.load(Ordering::SeqCst), 0);
        // Cached: no further requests (credentials and region).
        assert_eq!(chain.credentials().unwrap(), c);
        assert_eq!(chain.region().unwrap(), "eu-west-1");
        assert_eq!(imds.seen().len(), 5);
    }

    /// The refresh rules with an injected clock: cached until the margin, refetched inside it;
    /// a failed refresh keeps still-valid credentials; once they expired, the failure shows.
    #[test]
    fn refresh_before_expiry_and_keep_on_failure() {
        let (imds, state) = fake_imds("2030-01-01T00:00:00Z", "eu-west-1");
        let chain = chain(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url())]);
        assert_eq!(
            chain.credentials_at(EXP - 3600).unwrap().access_key_id,
            "ASIAFAKE1"
        );
        let c = chain
            .credentials_at(EXP - CREDENTIAL_REFRESH_MARGIN_SECS - 1)
            .unwrap();
        assert_eq!(c.access_key_id, "ASIAFAKE1");
        assert_eq!(state.creds_served.load(Ordering::SeqCst), 1);
        let c = chain
            .credentials_at(EXP - CREDENTIAL_REFRESH_MARGIN_SECS)
            .unwrap();
        assert_eq!(c.access_key_id, "ASIAFAKE2");
        assert_eq!(state.creds_served.load(Ordering::SeqCst), 2);
        // Refresh failing while the cached credentials are still valid: keep using them,
        // trying again on every call (the warning itself is rate-limited).
        state.fail_creds.store(true, Ordering::SeqCst);
        let before = imds.seen().len();
        assert_eq!(
            chain.credentials_at(EXP - 60).unwrap().access_key_id,
            "ASIAFAKE2"
        );
        assert_eq!(
            chain.credentials_at(EXP - 59).unwrap().access_key_id,
            "ASIAFAKE2"
        );
        assert!(imds.seen().len() >= before + 6, "each call retried");
        assert_eq!(chain.cache.lock().unwrap().last_warn, Some(EXP - 60));
        // Once they have expired, the failure is reported.
        let err = chain.credentials_at(EXP).unwrap_err();
        assert!(err.to_string().contains("500"), "{err}");
        // And the source recovers.
        state.fail_creds.store(false, Ordering::SeqCst);
        assert_eq!(
            chain.credentials_at(EXP - 60).unwrap().access_key_id,
            "ASIAFAKE3"
        );
        assert_eq!(state.unauthorized.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn imds_disabled_is_a_clear_error() {
        let chain = chain(&[
            ("AWS_EC2_METADATA_DISABLED", "TRUE"),
            // Must not be used: disabled wins.
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &dead_endpoint()),
        ]);
        let err = chain.credentials().unwrap_err();
        assert!(matches!(
            config_error(&err),
            ConfigError::NoCredentialsImdsDisabled
        ));
        assert!(
            err.to_string().contains("AWS_EC2_METADATA_DISABLED=true"),
            "{err}"
        );
        let err = chain.region().unwrap_err();
        assert!(matches!(err, AwsCredsError::NoRegionImdsDisabled));
    }

    #[test]
    fn invalid_imds_endpoint_is_a_clear_error() {
        for bad in ["https://127.0.0.1:1", "http://127.0.0.1:1/path", "nonsense"] {
            let err = chain(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", bad)])
                .credentials()
                .unwrap_err();
            assert!(
                matches!(
                    config_error(&err),
                    ConfigError::InvalidSetting {
                        name: "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn imds_down_fails_fast() {
        let ep = dead_endpoint();
        let chain = chain(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &ep)]);
        let started = Instant::now();
        let err = chain.credentials().unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let AwsCredsError::Fetch { error, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(
            matches!(**error, FetchError::Http(HttpError::Connect(_))),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&ep) && msg.contains("cannot connect"), "{msg}");
    }

    #[test]
    fn imds_hanging_times_out() {
        let fake = Fake::hanging();
        let chain = chain(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &fake.url())]);
        let started = Instant::now();
        let err = chain.credentials().unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= IMDS_TIMEOUTS.io && took < Duration::from_millis(2500),
            "{took:?}"
        );
        let AwsCredsError::Fetch { error, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(
            matches!(**error, FetchError::Http(HttpError::Timeout(_))),
            "{err:?}"
        );
    }

    #[test]
    fn chain_is_send_sync_and_debug_redacts() {
        fn check<T: Send + Sync>() {}
        check::<CredentialChain>();
        let c = chain(&[
            ("AWS_ACCESS_KEY_ID", "AKIAENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "envtoken"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1/c"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "containertoken"),
        ]);
        let dbg = format!("{c:?}");
        assert!(dbg.contains("environment variables"), "{dbg}");
        for secret in ["envsecret", "envtoken", "containertoken"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
    }
}
