//! A queue's settings as its operator writes them ([`QueueSpec`]), checked
//! into what TaskFlow enforces ([`QueueSettings`]): what it grants its tasks
//! and how its jobs may start ([`QueueLimits`]).

use std::collections::BTreeMap;
use std::fmt;

use super::allowed_host::AllowedHost;
use super::limits::{LimitsSpec, QueueLimits};
use super::retention::{Retention, RetentionSpec};
use crate::job::FieldError;

/// Most `allowed_hosts` entries a queue (or one secret) may have.
pub const MAX_ALLOWED_HOSTS: usize = 64;
/// Most configuration entries a queue may have.
pub const MAX_CONFIG_ENTRIES: usize = 64;
/// Longest configuration value, in bytes.
pub const MAX_CONFIG_VALUE_BYTES: usize = 8 << 10;
/// Most secrets a queue may have.
pub const MAX_SECRETS: usize = 32;
/// Longest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 8 << 10;

/// What a queue grants its tasks: the hosts they may call, the
/// configuration they may read, and the secrets they may use (by name, each
/// only towards its own hosts); and the limits on how its jobs start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    /// Hosts any request may go to.
    pub allowed_hosts: Vec<AllowedHost>,
    /// Plain values a task may read.
    pub config: BTreeMap<String, String>,
    /// Secret names, each with the hosts its value may be sent to.
    pub secrets: BTreeMap<String, Vec<AllowedHost>>,
    /// How its jobs may start.
    pub limits: QueueLimits,
    /// How long its finished jobs are kept.
    pub retention: Retention,
}

/// A secret's value: never printed or compared by content, so it cannot
/// reach a log or an error by accident. It (de)serializes as a plain string
/// only to travel from the client to the API; no response type holds one.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself, for the one place that sends it (the outbound
    /// request's header) and the one that encrypts it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// A queue's settings as submitted: the whole of them, replacing what was
/// there. A secret given without a value keeps its stored value (so its
/// hosts can change without resending it); a secret left out is deleted.
#[derive(Debug, Clone, Default)]
pub struct QueueSpec {
    /// `allowed_hosts` entries as written.
    pub allowed_hosts: Vec<String>,
    /// Configuration.
    pub config: BTreeMap<String, String>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, SecretSpec>,
    /// Limits.
    pub limits: LimitsSpec,
    /// Retention.
    pub retention: RetentionSpec,
}

impl From<&QueueSettings> for QueueSpec {
    /// The spec that resolves to `settings` again, every secret keeping its
    /// stored value: what a partial change starts from.
    fn from(settings: &QueueSettings) -> Self {
        let texts = |hosts: &[AllowedHost]| hosts.iter().map(ToString::to_string).collect();
        Self {
            allowed_hosts: texts(&settings.allowed_hosts),
            config: settings.config.clone(),
            secrets: settings
                .secrets
                .iter()
                .map(|(name, hosts)| {
                    let spec = SecretSpec {
                        value: None,
                        allowed_hosts: texts(hosts),
                    };
                    (name.clone(), spec)
                })
                .collect(),
            limits: settings.limits.into(),
            retention: settings.retention.into(),
        }
    }
}

/// One secret as submitted.
#[derive(Debug, Clone, Default)]
pub struct SecretSpec {
    /// A new value, or `None` to keep the stored one.
    pub value: Option<SecretValue>,
    /// Hosts the value may be sent to.
    pub allowed_hosts: Vec<String>,
}

/// A checked [`QueueSpec`]: the settings, and the secret values to store.
#[derive(Debug, Clone)]
pub struct QueueChange {
    /// The settings to store.
    pub settings: QueueSettings,
    /// New values, by secret name (a subset of `settings.secrets`).
    pub new_secret_values: BTreeMap<String, SecretValue>,
}

impl QueueSpec {
    /// Checks every entry and bound.
    ///
    /// # Errors
    ///
    /// The first field that is malformed or over its bound, named as the
    /// client wrote it (`allowed_hosts[2]`, `config.region`,
    /// `secrets.api_key.value`). A secret's value never appears in it.
    pub fn resolve(self) -> Result<QueueChange, FieldError> {
        let limits = self.limits.resolve()?;
        let retention = self.retention.resolve()?;
        let allowed_hosts = parse_hosts("allowed_hosts", &self.allowed_hosts)?;
        check_count("config", self.config.len(), MAX_CONFIG_ENTRIES)?;
        for (key, value) in &self.config {
            let field = format!("config.{key}");
            check_key(&field, key)?;
            if value.len() > MAX_CONFIG_VALUE_BYTES || value.contains('\0') {
                return Err(FieldError::invalid(
                    &field,
                    format!("must be at most {MAX_CONFIG_VALUE_BYTES} bytes, without NUL"),
                ));
            }
        }
        check_count("secrets", self.secrets.len(), MAX_SECRETS)?;
        let mut secrets = BTreeMap::new();
        let mut new_secret_values = BTreeMap::new();
        for (name, secret) in self.secrets {
            let field = format!("secrets.{name}");
            check_key(&field, &name)?;
            let hosts = parse_hosts(&format!("{field}.allowed_hosts"), &secret.allowed_hosts)?;
            if hosts.is_empty() {
                return Err(FieldError::invalid(
                    &format!("{field}.allowed_hosts"),
                    "name at least one host the secret may be sent to",
                ));
            }
            if let Some(i) = hosts
                .iter()
                .position(|host| !allowed_hosts.iter().any(|queue| queue.covers(host)))
            {
                return Err(FieldError::invalid(
                    &format!("{field}.allowed_hosts[{i}]"),
                    format!(
                        "{} is not in the queue's allowed_hosts, so no request could carry the secret there",
                        hosts[i]
                    ),
                ));
            }
            if let Some(value) = secret.value {
                let bytes = value.expose().len();
                if bytes == 0 || bytes > MAX_SECRET_BYTES {
                    return Err(FieldError::invalid(
                        &format!("{field}.value"),
                        format!("must be 1 to {MAX_SECRET_BYTES} bytes"),
                    ));
                }
                new_secret_values.insert(name.clone(), value);
            }
            secrets.insert(name, hosts);
        }
        Ok(QueueChange {
            settings: QueueSettings {
                allowed_hosts,
                config: self.config,
                secrets,
                limits,
                retention,
            },
            new_secret_values,
        })
    }
}

fn parse_hosts(field: &str, entries: &[String]) -> Result<Vec<AllowedHost>, FieldError> {
    check_count(field, entries.len(), MAX_ALLOWED_HOSTS)?;
    let mut hosts: Vec<AllowedHost> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let host = AllowedHost::parse(entry)
            .map_err(|error| FieldError::invalid(&format!("{field}[{i}]"), error.to_string()))?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), FieldError> {
    if count > max {
        return Err(FieldError::invalid(field, format!("at most {max} entries")));
    }
    Ok(())
}

/// The longest configuration key or secret name, in bytes.
pub const MAX_KEY_BYTES: usize = 64;

/// Configuration keys and secret names: 1-64 of `A-Z a-z 0-9 _ . -`.
fn check_key(field: &str, key: &str) -> Result<(), FieldError> {
    let valid = (1..=MAX_KEY_BYTES).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(FieldError::invalid(
            field,
            "names must be 1-64 characters of A-Z, a-z, 0-9, _, . and -",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: Option<&str>, hosts: &[&str]) -> SecretSpec {
        SecretSpec {
            value: value.map(|value| SecretValue::new(value.to_owned())),
            allowed_hosts: hosts.iter().map(|&host| host.to_owned()).collect(),
        }
    }

    #[test]
    fn a_spec_resolves_to_settings_and_the_values_to_store() {
        let spec = QueueSpec {
            allowed_hosts: vec![
                "https://api.example.com".into(),
                "https://api.example.com:443".into(),
                "https://*.example.com".into(),
            ],
            config: [("region".to_owned(), "eu".to_owned())].into(),
            secrets: [
                (
                    "token".to_owned(),
                    secret(Some("s3cret"), &["https://api.example.com"]),
                ),
                ("kept".to_owned(), secret(None, &["https://*.example.com"])),
            ]
            .into(),
            limits: LimitsSpec::default(),
            retention: RetentionSpec::default(),
        };
        let change = spec.resolve().unwrap();
        assert_eq!(
            change.settings.allowed_hosts.len(),
            2,
            "duplicates collapse"
        );
        assert_eq!(change.settings.secrets.len(), 2);
        assert_eq!(
            change.new_secret_values.keys().collect::<Vec<_>>(),
            ["token"]
        );
    }

    #[test]
    fn each_bad_field_is_named_and_no_secret_value_is_echoed() {
        let cases: Vec<(QueueSpec, &str)> = vec![
            (
                QueueSpec {
                    allowed_hosts: vec!["https://ok.example.com".into(), "gopher://x".into()],
                    ..QueueSpec::default()
                },
                "allowed_hosts[1]",
            ),
            (
                QueueSpec {
                    config: [("bad key".to_owned(), String::new())].into(),
                    ..QueueSpec::default()
                },
                "config.bad key",
            ),
            (
                QueueSpec {
                    config: [("nul".to_owned(), "a\0b".to_owned())].into(),
                    ..QueueSpec::default()
                },
                "config.nul",
            ),
            (
                QueueSpec {
                    secrets: [("token".to_owned(), secret(Some("hunter2"), &[]))].into(),
                    ..QueueSpec::default()
                },
                "secrets.token.allowed_hosts",
            ),
            (
                QueueSpec {
                    secrets: [(
                        "token".to_owned(),
                        secret(
                            Some(&"x".repeat(MAX_SECRET_BYTES + 1)),
                            &["https://a.example.com"],
                        ),
                    )]
                    .into(),
                    allowed_hosts: vec!["https://a.example.com".into()],
                    ..QueueSpec::default()
                },
                "secrets.token.value",
            ),
            (
                QueueSpec {
                    allowed_hosts: vec!["https://*.example.com".into()],
                    secrets: [(
                        "token".to_owned(),
                        secret(
                            Some("hunter2"),
                            &["https://a.example.com", "https://example.com"],
                        ),
                    )]
                    .into(),
                    ..QueueSpec::default()
                },
                "secrets.token.allowed_hosts[1]",
            ),
        ];
        for (spec, field) in cases {
            let error = spec.resolve().unwrap_err();
            assert_eq!(error.field, field);
            assert!(!error.message.contains("hunter2") && !error.message.contains("xxxx"));
        }
    }

    #[test]
    fn a_secret_value_never_prints() {
        let value = SecretValue::new("hunter2".into());
        assert!(!format!("{value:?}").contains("hunter2"));
        let spec = secret(Some("hunter2"), &["https://a.example.com"]);
        assert!(!format!("{spec:?}").contains("hunter2"));
    }
}
