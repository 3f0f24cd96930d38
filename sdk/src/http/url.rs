//! The few URLs a task may request: absolute `http://` and `https://` ones,
//! split the way wasi:http wants them.

use std::net::Ipv6Addr;

use super::HttpError;

/// The transport a URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// An absolute HTTP URL, split into the parts of an outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub(crate) scheme: Scheme,
    /// `host[:port]`, the host in lowercase; an IPv6 host keeps its brackets.
    pub(crate) authority: String,
    /// Starts with `/`; the fragment is dropped (it is never sent).
    pub(crate) path_with_query: String,
}

impl Url {
    /// Parses an absolute `http://` or `https://` URL.
    pub(crate) fn parse(text: &str) -> Result<Self, HttpError> {
        let invalid = |reason: &str| HttpError::InvalidUrl {
            url: shown(text),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("expected an absolute http:// or https:// URL"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid("only http:// and https:// URLs are supported")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let authority = parse_authority(authority).map_err(invalid)?;
        if !path.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                "spaces, control and non-ASCII characters must be percent-encoded",
            ));
        }
        let path_with_query = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Self {
            scheme,
            authority,
            path_with_query,
        })
    }

    /// The URL without its query string, which may carry tokens: the form
    /// errors and logs show.
    pub(crate) fn without_query(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let path = without_query(&self.path_with_query);
        format!("{scheme}://{}{path}", self.authority)
    }
}

/// `text` up to its query or fragment.
fn without_query(text: &str) -> &str {
    text.split(['?', '#']).next().unwrap_or_default()
}

/// A URL that did not parse, as an error may show it: without its query,
/// fragment or credentials (`user:password@`), which may carry secrets.
/// A password may hold an unencoded `/`, `?` or `#` (which is why the URL
/// did not parse), so everything up to the last `@` goes, whatever it is.
fn shown(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    match rest.rsplit_once('@') {
        Some((_, after)) => format!("{scheme}…@{}", without_query(after)),
        None => format!("{scheme}{}", without_query(rest)),
    }
}

/// Checks `host[:port]` and returns it with the host in lowercase.
fn parse_authority(authority: &str) -> Result<String, &'static str> {
    if authority.contains('@') {
        return Err("credentials in a URL are not supported: send them in a header, with a secret");
    }
    let (host, port) = split_host_port(authority)?;
    if host.is_empty() {
        return Err("the URL has no host");
    }
    let host = host.to_ascii_lowercase();
    match port {
        None => Ok(host),
        Some(port) => {
            let port: u16 = port
                .parse()
                .map_err(|_| "the port must be a number from 0 to 65535")?;
            Ok(format!("{host}:{port}"))
        }
    }
}

/// Splits `host[:port]`; an IPv6 host is in brackets, `[::1]:8080`.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or("unclosed [ in the host")?;
        address
            .parse::<Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address in the host")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("unexpected text after the IPv6 address")?,
            ),
        };
        (&authority[..address.len() + 2], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let valid_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.starts_with('[') && !host.chars().all(valid_name) {
        return Err("invalid character in the host (use the ASCII form of international names)");
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Scheme, String, String) {
        let url = Url::parse(text).unwrap();
        (url.scheme, url.authority, url.path_with_query)
    }

    fn reason(text: &str) -> String {
        match Url::parse(text) {
            Err(HttpError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{text} parsed as {other:?}"),
        }
    }

    #[test]
    fn splits_scheme_authority_and_path() {
        assert_eq!(
            parse("https://api.example.com/v1/items?page=2&q=a"),
            (
                Scheme::Https,
                "api.example.com".into(),
                "/v1/items?page=2&q=a".into()
            )
        );
        assert_eq!(
            parse("HTTP://Example.COM:8080"),
            (Scheme::Http, "example.com:8080".into(), "/".into())
        );
        assert_eq!(
            parse("https://example.com?x=1"),
            (Scheme::Https, "example.com".into(), "/?x=1".into())
        );
        assert_eq!(
            parse("https://example.com/a/b#section"),
            (Scheme::Https, "example.com".into(), "/a/b".into())
        );
    }

    #[test]
    fn accepts_ip_hosts() {
        assert_eq!(parse("http://[::1]:3000/x").1, "[::1]:3000");
        assert_eq!(parse("http://[2001:db8::1]/").1, "[2001:db8::1]");
        assert_eq!(parse("http://127.0.0.1:80/").1, "127.0.0.1:80");
    }

    #[test]
    fn rejects_what_is_not_an_http_url() {
        let cases = [
            ("example.com/x", "absolute"),
            ("ftp://example.com/x", "only http"),
            ("https:///path", "no host"),
            ("https://", "no host"),
            ("https://user:pw@example.com/", "credentials"),
            ("http://[::1/", "unclosed"),
            ("http://[zz::1]/", "IPv6"),
            ("http://[::1]x/", "after the IPv6"),
            ("http://example.com:/", "port"),
            ("http://example.com:65536/", "port"),
            ("http://exa mple.com/", "host"),
            ("http://bücher.de/", "host"),
            ("https://example.com/a b", "percent-encoded"),
        ];
        for (url, why) in cases {
            let said = reason(url);
            assert!(said.contains(why), "{url}: {said}");
        }
    }

    #[test]
    fn messages_leave_out_the_query() {
        let url = Url::parse("https://example.com/hook?token=s3cret#x").unwrap();
        assert_eq!(url.without_query(), "https://example.com/hook");
        let error = Url::parse("ftp://example.com/hook?token=s3cret").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        assert!(
            error.to_string().contains("ftp://example.com/hook"),
            "{error}"
        );
    }

    /// The message goes into the attempt's record, like the query it
    /// already leaves out: the credentials of a refused URL must not.
    #[test]
    fn messages_leave_out_credentials() {
        for url in [
            "https://api:pa55w0rd@example.com/x",
            "ftp://api:pa55w0rd@example.com/x",
            "api:pa55w0rd@example.com/x",
            // Unencoded `/`, `?` or `#` in the password.
            "https://api:pa55/w0rd@example.com/x",
            "https://api:pa55?w0rd@example.com/x",
            "https://api:pa55#w0rd@example.com/x",
        ] {
            let error = Url::parse(url).unwrap_err().to_string();
            assert!(
                !error.contains("pa55") && !error.contains("w0rd"),
                "{error}"
            );
            assert!(error.contains("example.com/x"), "{error}");
        }
    }
}
