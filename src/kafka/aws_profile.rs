//! The AWS shared configuration and credentials files (`~/.aws/config`,
//! `~/.aws/credentials`) and named profiles: reading and parsing the two INI-style files,
//! merging a profile's sections, and resolving the profile that is used into a
//! [`ProfilePlan`] — where its credentials come from (static keys, a web identity token
//! file, or a `credential_source`) and the roles to assume from there (`role_arn` +
//! `source_profile` chains).
//!
//! May depend on: `super::sigv4` (the `Credentials` type), std (reading the two files),
//! `thiserror`, `tracing`. No network: fetching is `aws_creds`'s.
//!
//! File rules (the AWS SDKs' shared-config format): in the config file a profile is
//! `[profile NAME]`, except the default profile, which may be `[default]` or
//! `[profile default]`; other sections (`[sso-session …]`, `[services …]`, a bare `[NAME]`)
//! are not profiles and are skipped. In the credentials file a profile is `[NAME]`. Keys are
//! case-insensitive, values trimmed and otherwise verbatim (no inline comments: `#` and `;`
//! start a comment only at the start of a line, or after a section header). An indented line
//! continues the previous value, or (after an empty value) is a sub-property, which nothing
//! here uses. For a key set in both files the credentials file wins; a key repeated within a
//! file takes its last value.
//!
//! Invariants: resolution terminates (a `source_profile` cycle is an error naming the
//! profiles); a key we cannot serve (`credential_process`, `sso_*`, `mfa_serial`) in a
//! profile we use is an error naming it, never silently skipped; no secret appears in an
//! error or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::sigv4::Credentials;

/// Largest file read, in bytes: 1 MiB (real ones are a few KiB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Keys of credential mechanisms this crate does not implement. A profile that is used and
/// has one of them is an error naming the key.
const UNSUPPORTED_KEYS: &[&str] = &[
    "credential_process",
    "sso_session",
    "sso_start_url",
    "sso_account_id",
    "sso_role_name",
    "sso_region",
    "mfa_serial",
];

/// Keys that make a profile a credential source (the default profile is only used for
/// credentials when it has one of them; otherwise the chain moves on).
const CREDENTIAL_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "role_arn",
    "source_profile",
    "credential_source",
    "web_identity_token_file",
];

/// Why the shared files or a profile cannot give credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} line {line}: {reason}")]
    Syntax {
        path: String,
        line: usize,
        reason: &'static str,
    },
    #[error("profile {0:?} is not in the shared config or credentials file")]
    NotFound(String),
    #[error(
        "profile {profile:?} uses `{key}`, which capture-proxy does not support (use static \
         keys, role_arn with source_profile/credential_source/web_identity_token_file, or \
         another credential source)"
    )]
    Unsupported { profile: String, key: &'static str },
    #[error("profile {0:?} has no credentials (no aws_access_key_id/aws_secret_access_key, role_arn or web_identity_token_file)")]
    NoCredentials(String),
    #[error("profile {profile:?}: {reason}")]
    Invalid {
        profile: String,
        reason: &'static str,
    },
    #[error("profile {profile:?}: unknown credential_source {value:?} (expected Environment, Ec2InstanceMetadata or EcsContainer)")]
    BadCredentialSource { profile: String, value: String },
    #[error("source_profile cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// One profile's merged properties (lowercase key → value).
#[derive(Default, Clone, PartialEq, Eq)]
pub(super) struct Profile {
    props: BTreeMap<String, String>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys only: values may be secrets.
        f.debug_set().entries(self.props.keys()).finish()
    }
}

impl Profile {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.props
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn has_any(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.get(k).is_some())
    }

    fn static_credentials(&self, name: &str) -> Result<Option<Credentials>, ProfileError> {
        match (
            self.get("aws_access_key_id"),
            self.get("aws_secret_access_key"),
        ) {
            (Some(id), Some(secret)) => Ok(Some(Credentials {
                access_key_id: id.to_string(),
                secret_access_key: secret.to_string(),
                session_token: self.get("aws_session_token").map(str::to_string),
                expiration_epoch_secs: None,
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ProfileError::Invalid {
                profile: name.to_string(),
                reason: "aws_access_key_id is set but aws_secret_access_key is not",
            }),
            (None, Some(_)) => Err(ProfileError::Invalid {
                profile: name.to_string(),
                reason: "aws_secret_access_key is set but aws_access_key_id is not",
            }),
        }
    }
}

/// Every profile of the two files, merged.
#[derive(Debug, Default, Clone)]
pub(super) struct ProfileSet {
    profiles: BTreeMap<String, Profile>,
}

/// Where the two files are: `AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE`, else
/// `$HOME/.aws/config` / `$HOME/.aws/credentials` (a leading `~/` is expanded). `None` when
/// neither an override nor `HOME` is set.
pub(super) fn file_paths(
    get: &dyn Fn(&str) -> Option<String>,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let home = get("HOME");
    let path = |var: &str, default: &str| -> Option<PathBuf> {
        match get(var) {
            Some(p) => match (p.strip_prefix("~/"), &home) {
                (Some(rest), Some(h)) => Some(Path::new(h).join(rest)),
                _ => Some(PathBuf::from(p)),
            },
            None => home
                .as_ref()
                .map(|h| Path::new(h).join(".aws").join(default)),
        }
    };
    (
        path("AWS_CONFIG_FILE", "config"),
        path("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
    )
}

impl ProfileSet {
    /// Reads and merges both files; a missing file counts as empty.
    pub fn load(config: Option<&Path>, credentials: Option<&Path>) -> Result<Self, ProfileError> {
        let config_text = read_optional(config)?;
        let credentials_text = read_optional(credentials)?;
        let name = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
        Self::parse(
            (&name(config), config_text.as_deref().unwrap_or("")),
            (
                &name(credentials),
                credentials_text.as_deref().unwrap_or(""),
            ),
        )
    }

    /// Parses the two files' contents, `(path for messages, text)` each.
    pub fn parse(config: (&str, &str), credentials: (&str, &str)) -> Result<Self, ProfileError> {
        let mut profiles: BTreeMap<String, Profile> = BTreeMap::new();
        // Config file: `[default]` first, so `[profile default]` overrides it.
        let mut sections = parse_ini(config.0, config.1)?;
        sections.sort_by_key(|(header, _)| header.trim() != "default");
        for (header, props) in sections {
            let header = header.trim();
            let name = if header == "default" {
                Some("default")
            } else {
                header
                    .strip_prefix("profile")
                    .filter(|rest| rest.starts_with([' ', '\t']))
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
            };
            match name {
                Some(n) => profiles
                    .entry(n.to_string())
                    .or_default()
                    .props
                    .extend(props),
                None => {
                    tracing::debug!(
                        section = header,
                        "skipping non-profile section of the AWS config file"
                    );
                }
            }
        }
        // Credentials file: `[NAME]`; its keys win.
        for (header, props) in parse_ini(credentials.0, credentials.1)? {
            let n = header.trim();
            if !n.is_empty() {
                profiles
                    .entry(n.to_string())
                    .or_default()
                    .props
                    .extend(props);
            }
        }
        Ok(Self { profiles })
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// Whether `name` exists and names any way to get credentials.
    pub fn has_credentials(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|p| p.has_any(CREDENTIAL_KEYS) || p.has_any(UNSUPPORTED_KEYS))
    }

    /// The plan for profile `name`'s credentials (see the module docs).
    pub fn resolve(&self, name: &str) -> Result<ProfilePlan, ProfileError> {
        let mut visited: Vec<String> = Vec::new();
        let mut roles: Vec<RoleStep> = Vec::new();
        let mut current = name.to_string();
        let base = loop {
            if visited.contains(&current) {
                visited.push(current);
                return Err(ProfileError::Cycle(visited));
            }
            let p = self
                .get(&current)
                .ok_or_else(|| ProfileError::NotFound(current.clone()))?;
            let is_source = !visited.is_empty();
            visited.push(current.clone());
            if let Some(key) = UNSUPPORTED_KEYS.iter().find(|k| p.get(k).is_some()) {
                return Err(ProfileError::Unsupported {
                    profile: current,
                    key,
                });
            }
            let invalid = |reason| ProfileError::Invalid {
                profile: current.clone(),
                reason,
            };
            let statics = p.static_credentials(&current)?;
            // A source profile with static keys ends the chain with them (as the AWS SDKs do),
            // even if it also names a role.
            if let (true, Some(c)) = (is_source, &statics) {
                break BaseCredentials::Static(c.clone());
            }
            let Some(role_arn) = p.get("role_arn") else {
                if p.get("web_identity_token_file").is_some() {
                    return Err(invalid("web_identity_token_file needs role_arn"));
                }
                if p.get("credential_source").is_some() {
                    return Err(invalid("credential_source needs role_arn"));
                }
                match statics {
                    Some(c) => break BaseCredentials::Static(c),
                    None => return Err(ProfileError::NoCredentials(current)),
                }
            };
            let duration_secs = match p.get("duration_seconds") {
                None => None,
                Some(v) => Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|d| (900..=43_200).contains(d))
                        .ok_or_else(|| invalid("duration_seconds must be 900..=43200"))?,
                ),
            };
            let step = RoleStep {
                profile: current.clone(),
                role_arn: role_arn.to_string(),
                session_name: p.get("role_session_name").map(str::to_string),
                external_id: p.get("external_id").map(str::to_string),
                duration_secs,
            };
            match (
                p.get("source_profile"),
                p.get("credential_source"),
                p.get("web_identity_token_file"),
            ) {
                (Some(_), Some(_), _) => {
                    return Err(invalid(
                        "source_profile and credential_source are mutually exclusive",
                    ))
                }
                (Some(src), None, _) => {
                    roles.push(step);
                    if src == current {
                        // A profile that is its own source: its static keys assume its role.
                        match statics {
                            Some(c) => break BaseCredentials::Static(c),
                            None => return Err(invalid(
                                "source_profile names the profile itself but it has no static keys",
                            )),
                        }
                    }
                    current = src.to_string();
                }
                (None, Some(cs), _) => {
                    roles.push(step);
                    let source = match cs.trim() {
                        s if s.eq_ignore_ascii_case("Environment") => CredentialSource::Environment,
                        s if s.eq_ignore_ascii_case("Ec2InstanceMetadata") => {
                            CredentialSource::Ec2InstanceMetadata
                        }
                        s if s.eq_ignore_ascii_case("EcsContainer") => {
                            CredentialSource::EcsContainer
                        }
                        other => {
                            return Err(ProfileError::BadCredentialSource {
                                profile: current,
                                value: other.chars().take(64).collect(),
                            })
                        }
                    };
                    break BaseCredentials::Source(source);
                }
                (None, None, Some(token_file)) => {
                    break BaseCredentials::WebIdentity {
                        role_arn: step.role_arn,
                        token_file: PathBuf::from(token_file),
                        session_name: step.session_name,
                    };
                }
                (None, None, None) => return Err(invalid(
                    "role_arn needs source_profile, credential_source or web_identity_token_file",
                )),
            }
        };
        // Collected from the used profile down to the base: assume them base-first.
        roles.reverse();
        Ok(ProfilePlan { base, roles })
    }
}

fn read_optional(path: Option<&Path>) -> Result<Option<String>, ProfileError> {
    let Some(path) = path else { return Ok(None) };
    let err = |error| ProfileError::Read {
        path: path.display().to_string(),
        error,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE_BYTES), &mut text)
        .map_err(err)?;
    Ok(Some(text))
}

/// `(section header inside the brackets, [(lowercase key, value)])` in file order.
type Sections = Vec<(String, Vec<(String, String)>)>;

/// Parses the INI dialect of the shared files (see the module docs).
pub(super) fn parse_ini(path: &str, text: &str) -> Result<Sections, ProfileError> {
    let mut sections: Sections = Vec::new();
    // Whether the last property line had an empty value (then indented lines are
    // sub-properties, not continuations).
    let mut last_empty = false;
    for (i, raw) in text.lines().enumerate() {
        let syntax = |reason| ProfileError::Syntax {
            path: path.to_string(),
            line: i + 1,
            reason,
        };
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        let indented = line.len() != trimmed.len();
        if indented {
            let Some((_, props)) = sections.last_mut() else {
                return Err(syntax("indented line before any section"));
            };
            let Some((_, value)) = props.last_mut() else {
                return Err(syntax("indented line without a property to continue"));
            };
            if !last_empty {
                value.push('\n');
                value.push_str(trimmed);
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let close = rest
                .find(']')
                .ok_or_else(|| syntax("section header without ']'"))?;
            let after = rest.get(close + 1..).unwrap_or("").trim_start();
            if !(after.is_empty() || after.starts_with(['#', ';'])) {
                return Err(syntax("text after a section header"));
            }
            let header = rest.get(..close).unwrap_or("").trim();
            if header.is_empty() {
                return Err(syntax("empty section name"));
            }
            sections.push((header.to_string(), Vec::new()));
            last_empty = false;
            continue;
        }
        let (key, value) = trimmed
            .split_once('=')
            .ok_or_else(|| syntax("expected `key = value`"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(syntax("empty key"));
        }
        let Some((_, props)) = sections.last_mut() else {
            return Err(syntax("property before any section"));
        };
        let value = value.trim();
        last_empty = value.is_empty();
        props.push((key.to_ascii_lowercase(), value.to_string()));
    }
    Ok(sections)
}

/// How a profile's credentials are obtained: `base`, then each role of `roles` assumed in
/// order with the credentials of the step before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProfilePlan {
    pub base: BaseCredentials,
    pub roles: Vec<RoleStep>,
}

/// Where a profile chain starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BaseCredentials {
    Static(Credentials),
    /// `role_arn` + `web_identity_token_file` (+ `role_session_name`).
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
        session_name: Option<String>,
    },
    Source(CredentialSource),
}

/// `credential_source` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CredentialSource {
    Environment,
    Ec2InstanceMetadata,
    EcsContainer,
}

/// An STS `AssumeRole` a profile asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RoleStep {
    /// The profile that names the role (for messages).
    pub profile: String,
    pub role_arn: String,
    pub session_name: Option<String>,
    pub external_id: Option<String>,
    pub duration_secs: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(config: &str, credentials: &str) -> ProfileSet {
        ProfileSet::parse(("config", config), ("credentials", credentials)).unwrap()
    }

    fn keys(id: &str, secret: &str, token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: token.map(str::to_string),
            expiration_epoch_secs: None,
        }
    }

    #[test]
    fn ini_sections_comments_and_values() {
        let text = "# top comment\r\n; another\r\n[default]\r\nregion = eu-west-1 \r\n\
                    AWS_Access_Key_ID=AKIA1\r\naws_secret_access_key = a/b+c=d#e;f\r\n\r\n\
                    [profile  two ] ; trailing comment\r\nregion=us-east-2\r\n  \r\n\
                    s3 =\r\n  max_concurrent_requests = 10\r\n  addressing_style = path\r\n\
                    note = first\r\n  second line\r\nregion = us-west-1\r\n";
        let sections = parse_ini("f", text).unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].0, "default");
        assert_eq!(
            sections[0].1,
            [
                ("region".to_string(), "eu-west-1".to_string()),
                ("aws_access_key_id".into(), "AKIA1".into()),
                // No inline comments in values: '#', ';' and '=' are part of it.
                ("aws_secret_access_key".into(), "a/b+c=d#e;f".into()),
            ]
        );
        assert_eq!(sections[1].0, "profile  two");
        let two: BTreeMap<_, _> = sections[1].1.iter().cloned().collect();
        assert_eq!(two["s3"], ""); // sub-properties are not values
        assert_eq!(two["note"], "first\nsecond line");
        assert_eq!(two["region"], "us-west-1"); // the last one wins (BTreeMap from the list)
    }

    #[test]
    fn ini_syntax_errors_name_the_line() {
        for (text, line) in [
            ("region = x\n", 1),
            ("[default]\nno equals sign\n", 2),
            ("[default\nregion = x\n", 1),
            ("[]\n", 1),
            ("[default] junk\n", 1),
            ("[default]\n = x\n", 2),
            ("  indented first\n", 1),
            ("[default]\n\n  continuation without a key\n", 3),
        ] {
            match parse_ini("/x/config", text) {
                Err(ProfileError::Syntax { path, line: l, .. }) => {
                    assert_eq!((path.as_str(), l), ("/x/config", line), "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn profile_section_rules_and_file_precedence() {
        let s = set(
            "[default]\nregion = a\nx = from-default\n\
             [profile default]\nregion = b\n\
             [foo]\nregion = bare-section-is-not-a-profile\n\
             [profile foo]\nregion = c\naws_access_key_id = CONFIGKEY\n\
             [profilebar]\nregion = d\n\
             [sso-session s]\nsso_region = e\n\
             [services dev]\nsts =\n  endpoint_url = http://x\n",
            "[foo]\naws_access_key_id = CREDSKEY\naws_secret_access_key = s\n\
             [profile baz]\nregion = f\n",
        );
        let d = s.get("default").unwrap();
        assert_eq!(d.get("region"), Some("b")); // [profile default] wins over [default]
        assert_eq!(d.get("x"), Some("from-default"));
        let foo = s.get("foo").unwrap();
        assert_eq!(foo.get("region"), Some("c"));
        assert_eq!(foo.get("aws_access_key_id"), Some("CREDSKEY")); // credentials file wins
        assert!(s.get("profilebar").is_none() && s.get("bar").is_none());
        assert!(s.get("s").is_none() && s.get("dev").is_none());
        // In the credentials file the section name is the profile name, verbatim.
        assert!(s.get("profile baz").is_some() && s.get("baz").is_none());
        assert!(s.has_credentials("foo"));
        assert!(!s.has_credentials("default")); // only a region
        assert!(!s.has_credentials("missing"));
        // Debug shows keys, never values.
        let dbg = format!("{foo:?}");
        assert!(
            dbg.contains("aws_access_key_id") && !dbg.contains("CREDSKEY"),
            "{dbg}"
        );
    }

    #[test]
    fn static_keys_with_and_without_session_token() {
        let s = set(
            "",
            "[a]\naws_access_key_id = K\naws_secret_access_key = S\naws_session_token = T\n\
             [b]\naws_access_key_id = K2\naws_secret_access_key = S2\n\
             [half]\naws_access_key_id = K3\n",
        );
        let plan = s.resolve("a").unwrap();
        assert_eq!(
            plan.base,
            BaseCredentials::Static(keys("K", "S", Some("T")))
        );
        assert!(plan.roles.is_empty());
        let plan = s.resolve("b").unwrap();
        assert_eq!(plan.base, BaseCredentials::Static(keys("K2", "S2", None)));
        assert!(matches!(
            s.resolve("half"),
            Err(ProfileError::Invalid { .. })
        ));
        assert!(matches!(s.resolve("nope"), Err(ProfileError::NotFound(n)) if n == "nope"));
    }

    #[test]
    fn role_chains_resolve_base_first() {
        let s = set(
            "[profile app]\nrole_arn = arn:aws:iam::1:role/app\nsource_profile = hop\n\
             role_session_name = sess\nexternal_id = ext\nduration_seconds = 1800\n\
             [profile hop]\nrole_arn = arn:aws:iam::1:role/hop\nsource_profile = base\n\
             [profile base]\naws_access_key_id = BK\naws_secret_access_key = BS\n\
             role_arn = arn:aws:iam::1:role/ignored-for-a-source\nsource_profile = base\n\
             [profile self]\nrole_arn = arn:aws:iam::1:role/self\nsource_profile = self\n\
             aws_access_key_id = SK\naws_secret_access_key = SS\n",
            "",
        );
        let plan = s.resolve("app").unwrap();
        assert_eq!(plan.base, BaseCredentials::Static(keys("BK", "BS", None)));
        let arns: Vec<_> = plan.roles.iter().map(|r| r.role_arn.as_str()).collect();
        assert_eq!(arns, ["arn:aws:iam::1:role/hop", "arn:aws:iam::1:role/app"]);
        let app = &plan.roles[1];
        assert_eq!(app.profile, "app");
        assert_eq!(app.session_name.as_deref(), Some("sess"));
        assert_eq!(app.external_id.as_deref(), Some("ext"));
        assert_eq!(app.duration_secs, Some(1800));
        // A profile that is its own source assumes its role with its own keys.
        let plan = s.resolve("self").unwrap();
        assert_eq!(plan.base, BaseCredentials::Static(keys("SK", "SS", None)));
        assert_eq!(plan.roles.len(), 1);
        // Used directly, `base` assumes its role with its own keys too (self-sourced).
        assert_eq!(s.resolve("base").unwrap().roles.len(), 1);
    }

    #[test]
    fn credential_source_and_web_identity_profiles() {
        let s = set(
            "[profile env]\nrole_arn = r1\ncredential_source = Environment\n\
             [profile ec2]\nrole_arn = r2\ncredential_source = ec2instancemetadata\n\
             [profile ecs]\nrole_arn = r3\ncredential_source = EcsContainer\n\
             [profile bad]\nrole_arn = r4\ncredential_source = Lambda\n\
             [profile both]\nrole_arn = r5\ncredential_source = Environment\nsource_profile = env\n\
             [profile web]\nrole_arn = r6\nweb_identity_token_file = /var/run/token\nrole_session_name = w\n\
             [profile webnorole]\nweb_identity_token_file = /t\n\
             [profile csnorole]\ncredential_source = Environment\n\
             [profile norole]\nrole_arn = r7\n\
             [profile dur]\nrole_arn = r8\ncredential_source = Environment\nduration_seconds = 60\n",
            "",
        );
        for (name, source) in [
            ("env", CredentialSource::Environment),
            ("ec2", CredentialSource::Ec2InstanceMetadata),
            ("ecs", CredentialSource::EcsContainer),
        ] {
            let plan = s.resolve(name).unwrap();
            assert_eq!(plan.base, BaseCredentials::Source(source), "{name}");
            assert_eq!(plan.roles.len(), 1);
        }
        assert!(matches!(
            s.resolve("bad"),
            Err(ProfileError::BadCredentialSource { value, .. }) if value == "Lambda"
        ));
        let plan = s.resolve("web").unwrap();
        assert_eq!(
            plan.base,
            BaseCredentials::WebIdentity {
                role_arn: "r6".into(),
                token_file: PathBuf::from("/var/run/token"),
                session_name: Some("w".into()),
            }
        );
        assert!(plan.roles.is_empty());
        for name in ["both", "webnorole", "csnorole", "norole", "dur"] {
            assert!(
                matches!(s.resolve(name), Err(ProfileError::Invalid { .. })),
                "{name}: {:?}",
                s.resolve(name)
            );
        }
    }

    #[test]
    fn cycles_unsupported_keys_and_missing_sources_are_errors() {
        let s = set(
            "[profile a]\nrole_arn = ra\nsource_profile = b\n\
             [profile b]\nrole_arn = rb\nsource_profile = c\n\
             [profile c]\nrole_arn = rc\nsource_profile = a\n\
             [profile sso]\nsso_session = corp\nsso_account_id = 1\n\
             [profile proc]\ncredential_process = /bin/creds\naws_access_key_id = K\naws_secret_access_key = S\n\
             [profile viaproc]\nrole_arn = r\nsource_profile = proc\n\
             [profile dangling]\nrole_arn = r\nsource_profile = gone\n\
             [profile empty]\nregion = x\n",
            "",
        );
        match s.resolve("a") {
            Err(e @ ProfileError::Cycle(_)) => {
                assert_eq!(e.to_string(), "source_profile cycle: a -> b -> c -> a")
            }
            other => panic!("{other:?}"),
        }
        match s.resolve("sso") {
            Err(
                e @ ProfileError::Unsupported {
                    key: "sso_session", ..
                },
            ) => {
                assert!(e.to_string().contains("`sso_session`"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // Unsupported keys count in a source profile too, even next to static keys.
        assert!(matches!(
            s.resolve("viaproc"),
            Err(ProfileError::Unsupported { profile, key: "credential_process" }) if profile == "proc"
        ));
        assert!(s.has_credentials("sso"));
        assert!(matches!(s.resolve("dangling"), Err(ProfileError::NotFound(n)) if n == "gone"));
        assert!(matches!(
            s.resolve("empty"),
            Err(ProfileError::NoCredentials(_))
        ));
    }

    #[test]
    fn file_locations() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let (c, k) = file_paths(&env(&[("HOME", "/home/u")]));
        assert_eq!(c.unwrap(), Path::new("/home/u/.aws/config"));
        assert_eq!(k.unwrap(), Path::new("/home/u/.aws/credentials"));
        let (c, k) = file_paths(&env(&[
            ("HOME", "/home/u"),
            ("AWS_CONFIG_FILE", "~/cfg"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/etc/aws/creds"),
        ]));
        assert_eq!(c.unwrap(), Path::new("/home/u/cfg"));
        assert_eq!(k.unwrap(), Path::new("/etc/aws/creds"));
        assert_eq!(file_paths(&env(&[])), (None, None));

        // Missing files are empty; present ones are read.
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, "[profile p]\nregion = r\n").unwrap();
        let s = ProfileSet::load(Some(&cfg), Some(&dir.path().join("nope"))).unwrap();
        assert_eq!(s.get("p").unwrap().get("region"), Some("r"));
        // A directory cannot be read: an error naming it.
        let err = ProfileSet::load(Some(dir.path()), None).unwrap_err();
        assert!(matches!(err, ProfileError::Read { .. }), "{err:?}");
    }
}
