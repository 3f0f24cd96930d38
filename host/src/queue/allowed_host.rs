//! Which hosts a task may reach ([`AllowedHost`]) and which addresses are
//! off limits unless named ([`is_public_address`]).
//!
//! An entry names a scheme, a host and a port, and all three must match a
//! request: `https://api.example.com` allows port 443 over TLS only,
//! `https://*.example.com:8443` any subdomain of example.com (not
//! example.com itself) on port 8443, `http://10.0.0.5:9000` that address
//! only. Nothing is allowed unless an entry says so.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// Parses `http` or `https` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// The host part of an [`AllowedHost`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostMatch {
    /// One DNS name, lowercase.
    Name(String),
    /// Any name ending in `.{suffix}` (one or more labels before it).
    Subdomains(String),
    /// One literal address.
    Address(IpAddr),
}

/// One entry of a queue's `allowed_hosts` (or of a secret's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowedHost {
    scheme: Scheme,
    host: HostMatch,
    port: u16,
}

/// Why an `allowed_hosts` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an allowed host: {1}")]
pub struct InvalidAllowedHost(pub String, pub &'static str);

/// Longest entry accepted.
const MAX_ENTRY_BYTES: usize = 300;

impl AllowedHost {
    /// Parses `scheme://host[:port]`, where host is a DNS name, `*.` and a
    /// DNS name, an IPv4 address or a bracketed IPv6 address. No path,
    /// query, user or wildcard port: an entry grants one host and port.
    ///
    /// # Errors
    ///
    /// If `entry` is not of that form.
    pub fn parse(entry: &str) -> Result<Self, InvalidAllowedHost> {
        let invalid = |why| InvalidAllowedHost(entry.chars().take(80).collect(), why);
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(invalid("longer than 300 bytes"));
        }
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| invalid("must start with http:// or https://"))?;
        let scheme =
            Scheme::parse(scheme).ok_or_else(|| invalid("the scheme must be http or https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(invalid(
                "name a scheme, host and port only: no path, query or user",
            ));
        }
        let (host, port) =
            split_host_port(rest).ok_or_else(|| invalid("malformed host or port"))?;
        let port = match port {
            None => scheme.default_port(),
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| invalid("the port must be 1-65535"))?,
        };
        let host = parse_host_match(host).ok_or_else(|| invalid("malformed host name"))?;
        Ok(Self { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry.
    /// `host` is the URL's host as the guest wrote it (a name or a literal
    /// address, IPv6 with or without brackets; any case; a trailing dot is
    /// ignored).
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if self.scheme != scheme || self.port != port {
            return false;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        match &self.host {
            HostMatch::Address(address) => parse_address(host) == Some(*address),
            HostMatch::Name(name) => host.eq_ignore_ascii_case(name),
            HostMatch::Subdomains(suffix) => {
                host.len() > suffix.len() + 1
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }

    /// Whether every request `other` allows is also allowed by this entry
    /// (a secret's host must be one its queue grants).
    pub fn covers(&self, other: &AllowedHost) -> bool {
        let host = match &other.host {
            HostMatch::Subdomains(suffix) => {
                return self.scheme == other.scheme
                    && self.port == other.port
                    && matches!(&self.host, HostMatch::Subdomains(mine)
                        if mine == suffix || suffix.ends_with(&format!(".{mine}")));
            }
            HostMatch::Name(name) => name.clone(),
            HostMatch::Address(address) => address.to_string(),
        };
        self.allows(other.scheme, &host, other.port)
    }

    /// Whether this entry names `address` itself (a literal IP, or
    /// `localhost` for loopback addresses): only such an entry lets a
    /// request reach an address [`is_public_address`] refuses.
    pub fn names_address(&self, address: IpAddr) -> bool {
        match &self.host {
            HostMatch::Address(named) => canonical(*named) == canonical(address),
            HostMatch::Name(name) => name == "localhost" && canonical(address).is_loopback(),
            HostMatch::Subdomains(_) => false,
        }
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostMatch::Name(name) => f.write_str(name)?,
            HostMatch::Subdomains(suffix) => write!(f, "*.{suffix}")?,
            HostMatch::Address(IpAddr::V6(address)) => write!(f, "[{address}]")?,
            HostMatch::Address(IpAddr::V4(address)) => write!(f, "{address}")?,
        }
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Splits `host[:port]`, where an IPv6 host is bracketed.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match text.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((text, None)),
    }
}

fn parse_host_match(host: &str) -> Option<HostMatch> {
    if let Some(address) = parse_address(host) {
        return Some(HostMatch::Address(address));
    }
    let host = host.to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(suffix) if is_dns_name(suffix) => Some(HostMatch::Subdomains(suffix.to_owned())),
        Some(_) => None,
        None if is_dns_name(&host) => Some(HostMatch::Name(host)),
        None => None,
    }
}

/// A literal address, IPv6 with or without brackets.
fn parse_address(host: &str) -> Option<IpAddr> {
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// A DNS name of letters, digits and hyphens: labels of 1-63, at most 253 in
/// all, and not all digits at the end (that would be a mistyped address).
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// Whether `address` is on the public internet: not loopback, private,
/// link-local (which holds the cloud metadata service, 169.254.169.254),
/// unique-local, carrier-grade NAT, benchmarking, IETF protocol
/// assignments, reserved, unspecified, broadcast, multicast or local-use
/// NAT64 (`64:ff9b:1::/48`); an IPv6 address that embeds an IPv4 one
/// (mapped, well-known NAT64, 6to4) is judged by it.
/// A task reaches any other address only through an entry that names it
/// ([`AllowedHost::names_address`]).
pub fn is_public_address(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    let shared = a == 100 && (64..128).contains(&b);
    let benchmarking = a == 198 && (b & 0xfe) == 18;
    let protocol_assignments = a == 192 && b == 0 && c == 0;
    let reserved = a >= 240;
    !(benchmarking
        || protocol_assignments
        || reserved
        || address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_unspecified()
        || address.is_broadcast()
        || address.is_multicast()
        || a == 0
        || shared)
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let link_local = first & 0xffc0 == 0xfe80;
    // ::a.b.c.d, long deprecated; some stacks still route it to IPv4.
    let deprecated_ipv4_compatible = address.segments()[..6] == [0; 6];
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4 address:
    // judge that one.
    let v4 = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match address.segments() {
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => return is_public_v4(v4(high, low)),
        [0x2002, high, low, ..] => return is_public_v4(v4(high, low)),
        _ => {}
    }
    let site_local = first & 0xffc0 == 0xfec0;
    // The local-use NAT64 prefix (RFC 8215), never global: a network that
    // runs a translator on it places the IPv4 address anywhere in the
    // /48 (its prefix length is the operator's choice), so none of it is
    // judged by an address it may embed.
    let local_use_nat64 = address.segments()[..3] == [0x64, 0xff9b, 1];
    !(address.is_loopback()
        || address.is_unspecified()
        || address.is_multicast()
        || unique_local
        || link_local
        || site_local
        || local_use_nat64
        || deprecated_ipv4_compatible)
}

#[cfg(test)]
mod tests;
