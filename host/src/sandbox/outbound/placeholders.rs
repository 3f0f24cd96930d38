//! Secrets a task uses without reading them: it holds a placeholder
//! ([`Placeholders::placeholder`]), and the host puts the value in its place
//! in a request's header values, only on the way to a host the secret is
//! bound to ([`Placeholders::substitute`]).

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::queue::{AllowedHost, Scheme, SecretValue};

/// A secret the job's queue grants: where it may go, and its value.
#[derive(Debug, Clone)]
pub struct GrantedSecret {
    /// Hosts its value may be sent to.
    pub hosts: Vec<AllowedHost>,
    /// The value.
    pub value: SecretValue,
}

/// The secrets of one attempt and the placeholders that stand for them.
#[derive(Debug)]
pub(super) struct Placeholders {
    /// `None` when the queue grants no secret: no placeholder can exist,
    /// and every attempt of such a queue (most of them) skips drawing a
    /// nonce and every check below.
    prefix: Option<Prefix>,
    secrets: BTreeMap<String, GrantedSecret>,
}

/// The start of every placeholder of one attempt: random per attempt, so a
/// placeholder from another attempt (or typed by hand) never matches.
#[derive(Debug)]
struct Prefix {
    /// As handed out: `{{taskflow-secret:<nonce>:`.
    text: String,
    /// Lowercase, plain and percent-encoded, as URLs are searched for it.
    in_urls: [String; 2],
}

impl Prefix {
    fn draw() -> Self {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).expect("the operating system provides randomness");
        let text = format!("{{{{taskflow-secret:{}:", hex::encode(nonce));
        // The nonce is lowercase hex, so lowercasing loses nothing.
        let in_urls = [
            text.to_ascii_lowercase(),
            percent_encoded(&text).to_ascii_lowercase(),
        ];
        Self { text, in_urls }
    }
}

/// Why a request carrying placeholders was refused. Names the secret,
/// never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Misuse {
    #[error("secret {0:?} is not bound to {1}")]
    NotBoundTo(String, String),
    #[error("a secret may be sent only in a header value, not in the URL")]
    InUrl,
    #[error("no secret {0:?} is granted to this queue")]
    Unknown(String),
    #[error("header {0} is not a valid header value once its secret is in it")]
    InvalidHeader(String),
}

const SUFFIX: &str = "}}";

impl Placeholders {
    pub(super) fn new(secrets: BTreeMap<String, GrantedSecret>) -> Self {
        Self {
            prefix: (!secrets.is_empty()).then(Prefix::draw),
            secrets,
        }
    }

    /// The placeholder of secret `name`, if the queue grants it.
    pub(super) fn placeholder(&self, name: &str) -> Option<String> {
        let prefix = self.prefix.as_ref()?;
        self.secrets
            .contains_key(name)
            .then(|| format!("{}{name}{SUFFIX}", prefix.text))
    }

    /// HMAC-SHA256 of `data` keyed with secret `name`.
    pub(super) fn hmac_sha256(&self, name: &str, data: &[u8]) -> Option<Vec<u8>> {
        let secret = self.secrets.get(name)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.value.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(data);
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// Refuses a URL that carries a placeholder.
    pub(super) fn check_url(&self, url: &str) -> Result<(), Misuse> {
        let Some(prefix) = &self.prefix else {
            return Ok(());
        };
        // Percent-encoding may use either case (`%7B`, `%7b`).
        let url = url.to_ascii_lowercase();
        if prefix
            .in_urls
            .iter()
            .any(|form| url.contains(form.as_str()))
        {
            return Err(Misuse::InUrl);
        }
        Ok(())
    }

    /// Replaces every placeholder in `headers` by its secret's value, if
    /// each of those secrets is bound to `scheme://host:port`; otherwise
    /// refuses the request and changes nothing.
    pub(super) fn substitute(
        &self,
        headers: &mut HeaderMap,
        scheme: Scheme,
        host: &str,
        port: u16,
    ) -> Result<(), Misuse> {
        let Some(prefix) = &self.prefix else {
            return Ok(());
        };
        // Every value is filled before any is written, so a refusal leaves
        // the headers as they were; values are replaced where they are, so
        // a header given several times keeps all of them, in order.
        let mut filled = Vec::with_capacity(headers.len());
        for (name, value) in headers.iter() {
            // As bytes: a value may hold any byte but control characters
            // (wasi:http passes them through), and `to_str` fails on
            // anything past ASCII, which would send the placeholder as it
            // is, to any host.
            let text = value.as_bytes();
            if find(text, prefix.text.as_bytes()).is_none() {
                filled.push(None);
                continue;
            }
            let substituted = fill(prefix.text.as_bytes(), text, |secret| {
                let granted = self
                    .secrets
                    .get(secret)
                    .ok_or_else(|| Misuse::Unknown(secret.to_owned()))?;
                if granted.hosts.iter().any(|h| h.allows(scheme, host, port)) {
                    Ok(granted.value.expose())
                } else {
                    let target = format!("{}://{host}:{port}", scheme.as_str());
                    Err(Misuse::NotBoundTo(secret.to_owned(), target))
                }
            })?;
            let mut value = HeaderValue::from_bytes(&substituted)
                .map_err(|_| Misuse::InvalidHeader(name.to_string()))?;
            value.set_sensitive(true);
            filled.push(Some(value));
        }
        for ((_, value), filled) in headers.iter_mut().zip(filled) {
            if let Some(filled) = filled {
                *value = filled;
            }
        }
        Ok(())
    }
}

/// `text` with each placeholder (starting with `prefix`) replaced by what
/// `value_of` says of the secret it names.
fn fill<'a>(
    prefix: &[u8],
    text: &[u8],
    value_of: impl Fn(&str) -> Result<&'a str, Misuse>,
) -> Result<Vec<u8>, Misuse> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find(rest, prefix) {
        out.extend_from_slice(&rest[..start]);
        let after = &rest[start + prefix.len()..];
        let Some(end) = find(after, SUFFIX.as_bytes()) else {
            out.extend_from_slice(&rest[start..]);
            return Ok(out);
        };
        let secret = String::from_utf8_lossy(&after[..end]);
        out.extend_from_slice(value_of(&secret)?.as_bytes());
        rest = &after[end + SUFFIX.len()..];
    }
    out.extend_from_slice(rest);
    Ok(out)
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// `{` and `}` as a URL encodes them, which is how a placeholder pasted into
/// a path or query arrives.
fn percent_encoded(text: &str) -> String {
    text.replace('{', "%7B").replace('}', "%7D")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders() -> Placeholders {
        let secret = GrantedSecret {
            hosts: vec![AllowedHost::parse("https://api.example.com").unwrap()],
            value: SecretValue::new("s3cr3t".into()),
        };
        Placeholders::new([("token".to_owned(), secret)].into())
    }

    #[test]
    fn a_placeholder_is_replaced_only_for_a_bound_host() {
        let secrets = placeholders();
        let token = secrets.placeholder("token").unwrap();
        assert!(!token.contains("s3cr3t"));
        assert_eq!(secrets.placeholder("other"), None);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers.insert("x-plain", "untouched".parse().unwrap());

        let mut elsewhere = headers.clone();
        let refused = secrets.substitute(&mut elsewhere, Scheme::Https, "evil.example.com", 443);
        assert_eq!(
            refused,
            Err(Misuse::NotBoundTo(
                "token".into(),
                "https://evil.example.com:443".into()
            ))
        );
        assert_eq!(elsewhere, headers, "nothing substituted on refusal");
        let plain_http =
            secrets.substitute(&mut headers.clone(), Scheme::Http, "api.example.com", 443);
        assert!(plain_http.is_err(), "the scheme is part of the binding");

        secrets
            .substitute(&mut headers, Scheme::Https, "api.example.com", 443)
            .unwrap();
        assert_eq!(headers["authorization"], "Bearer s3cr3t");
        assert!(headers["authorization"].is_sensitive());
        assert_eq!(headers["x-plain"], "untouched");
    }

    /// wasi:http takes header values as bytes, and the SDK passes UTF-8:
    /// a value that is not visible ASCII still has its placeholders
    /// filled for a bound host, and refused for any other.
    #[test]
    fn a_placeholder_in_a_value_with_non_ascii_bytes_is_filled_or_refused_all_the_same() {
        let secrets = placeholders();
        let token = secrets.placeholder("token").unwrap();
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_bytes(format!("café {token}").as_bytes()).unwrap();
        headers.insert("x-note", value);

        let refused =
            secrets.substitute(&mut headers.clone(), Scheme::Https, "evil.example.com", 443);
        assert!(
            matches!(refused, Err(Misuse::NotBoundTo(..))),
            "{refused:?}"
        );
        secrets
            .substitute(&mut headers, Scheme::Https, "api.example.com", 443)
            .unwrap();
        assert_eq!(headers["x-note"].as_bytes(), "café s3cr3t".as_bytes());
    }

    #[test]
    fn a_header_given_several_times_keeps_every_value_in_order() {
        let secrets = placeholders();
        let token = secrets.placeholder("token").unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-key", "first".parse().unwrap());
        headers.append("x-key", format!("second {token}").parse().unwrap());
        headers.append("x-key", "third".parse().unwrap());
        secrets
            .substitute(&mut headers, Scheme::Https, "api.example.com", 443)
            .unwrap();
        let values: Vec<_> = headers.get_all("x-key").iter().collect();
        assert_eq!(values, ["first", "second s3cr3t", "third"]);
    }

    #[test]
    fn placeholders_in_urls_and_of_other_attempts_do_not_leak() {
        let secrets = placeholders();
        let token = secrets.placeholder("token").unwrap();
        assert_eq!(
            secrets.check_url(&format!("/x?k={token}")),
            Err(Misuse::InUrl)
        );
        assert_eq!(
            secrets.check_url(&format!("/x/{}", percent_encoded(&token))),
            Err(Misuse::InUrl)
        );
        let lower = percent_encoded(&token).replace("%7B", "%7b");
        assert_eq!(
            secrets.check_url(&format!("/x/{lower}")),
            Err(Misuse::InUrl)
        );
        assert!(secrets.check_url("/x?k=1").is_ok());
        let other_attempt = placeholders().placeholder("token").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", other_attempt.parse().unwrap());
        secrets
            .substitute(&mut headers, Scheme::Https, "api.example.com", 443)
            .unwrap();
        assert_eq!(headers["authorization"], other_attempt.as_str());
    }

    #[test]
    fn without_secrets_there_is_nothing_to_hand_out_or_to_refuse() {
        let none = Placeholders::new(BTreeMap::new());
        assert_eq!(none.placeholder("token"), None);
        let foreign = placeholders().placeholder("token").unwrap();
        assert!(none.check_url(&format!("/x?k={foreign}")).is_ok());
        let mut headers = HeaderMap::new();
        headers.insert("authorization", foreign.parse().unwrap());
        none.substitute(&mut headers, Scheme::Https, "api.example.com", 443)
            .unwrap();
        assert_eq!(headers["authorization"], foreign.as_str());
    }

    #[test]
    fn hmac_uses_the_value_without_revealing_it() {
        let secrets = placeholders();
        let mac = secrets.hmac_sha256("token", b"payload").unwrap();
        // RFC 2104 HMAC-SHA256("s3cr3t", "payload"), computed independently.
        let mut expected = Hmac::<Sha256>::new_from_slice(b"s3cr3t").unwrap();
        expected.update(b"payload");
        assert_eq!(mac, expected.finalize().into_bytes().to_vec());
        assert_eq!(secrets.hmac_sha256("missing", b"x"), None);
    }
}
