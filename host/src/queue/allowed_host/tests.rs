//! Unit tests of `allowed_host.rs`, in a file of their own to keep that one short.

use super::*;

fn allows(entry: &str, scheme: Scheme, host: &str, port: u16) -> bool {
    AllowedHost::parse(entry)
        .unwrap()
        .allows(scheme, host, port)
}

#[test]
fn scheme_host_and_port_must_all_match() {
    use Scheme::{Http, Https};
    assert!(allows(
        "https://api.example.com",
        Https,
        "api.example.com",
        443
    ));
    assert!(allows(
        "https://api.example.com",
        Https,
        "API.Example.COM.",
        443
    ));
    assert!(!allows(
        "https://api.example.com",
        Http,
        "api.example.com",
        443
    ));
    assert!(!allows(
        "https://api.example.com",
        Https,
        "api.example.com",
        8443
    ));
    assert!(!allows(
        "https://api.example.com",
        Https,
        "example.com",
        443
    ));
    assert!(!allows(
        "https://api.example.com",
        Https,
        "api.example.com.evil",
        443
    ));
    assert!(allows(
        "https://*.example.com:8443",
        Https,
        "a.b.example.com",
        8443
    ));
    assert!(!allows(
        "https://*.example.com:8443",
        Https,
        "example.com",
        8443
    ));
    assert!(!allows(
        "https://*.example.com:8443",
        Https,
        "badexample.com",
        8443
    ));
    assert!(!allows(
        "https://*.example.com:8443",
        Https,
        "a.example.com",
        443
    ));
    assert!(allows("http://10.0.0.5:9000", Http, "10.0.0.5", 9000));
    assert!(!allows("http://10.0.0.5:9000", Http, "10.0.0.6", 9000));
    assert!(allows("http://[::1]:8080", Http, "[::1]", 8080));
    assert!(allows("http://[::1]:8080", Http, "0:0::1", 8080));
}

#[test]
fn malformed_entries_are_refused() {
    for entry in [
        "api.example.com",
        "ftp://example.com",
        "https://example.com/path",
        "https://user@example.com",
        "https://example.com:0",
        "https://example.com:99999",
        "https://example.com:*",
        "https://*",
        "https://*.",
        "https://a.*.example.com",
        "https://exa mple.com",
        "https://-bad.example.com",
        "https://[::1",
        "https://1.2.3.999",
        "https://",
    ] {
        assert!(AllowedHost::parse(entry).is_err(), "{entry} was accepted");
    }
}

#[test]
fn entries_print_as_they_would_be_written() {
    for (entry, shown) in [
        ("HTTPS://API.example.com/", "https://api.example.com"),
        ("https://api.example.com:443", "https://api.example.com"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("https://*.example.com:8443", "https://*.example.com:8443"),
    ] {
        assert_eq!(AllowedHost::parse(entry).unwrap().to_string(), shown);
    }
}

#[test]
fn internal_addresses_are_not_public() {
    for address in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "255.255.255.255",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",
        "64:ff9b:1::a9fe:a9fe",
        "64:ff9b:1:a9fe:a9:fe00::",
        "2002:7f00:1::",
        "fec0::1",
        "198.18.0.1",
        "192.0.0.8",
        "240.0.0.1",
        "ff02::1",
    ] {
        assert!(!is_public_address(address.parse().unwrap()), "{address}");
    }
    for address in [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700::1111",
        "64:ff9b::808:808",
    ] {
        assert!(is_public_address(address.parse().unwrap()), "{address}");
    }
}

#[test]
fn only_an_entry_naming_an_internal_address_reaches_it() {
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    let named = AllowedHost::parse("http://127.0.0.1:8080").unwrap();
    assert!(named.names_address(loopback));
    assert!(named.names_address(mapped));
    assert!(!named.names_address("127.0.0.2".parse().unwrap()));
    let localhost = AllowedHost::parse("http://localhost:8080").unwrap();
    assert!(localhost.names_address(loopback));
    assert!(localhost.names_address("::1".parse().unwrap()));
    assert!(!localhost.names_address("10.0.0.1".parse().unwrap()));
    let name = AllowedHost::parse("https://internal.example.com").unwrap();
    assert!(!name.names_address(loopback));
}

mod properties {
    use proptest::prelude::*;

    use super::super::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    fn name() -> impl Strategy<Value = String> {
        (prop::collection::vec(label(), 1..4), "[a-z]{2,6}")
            .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
    }

    proptest! {
        /// A name entry allows exactly its own name (any case), and a
        /// subdomain entry exactly the names below its suffix.
        #[test]
        fn names_match_exactly_and_subdomains_strictly(
            granted in name(), asked in name(), prefix in label(), port in 1u16..,
        ) {
            let exact = AllowedHost::parse(&format!("https://{granted}:{port}")).unwrap();
            prop_assert!(exact.allows(Scheme::Https, &granted.to_uppercase(), port));
            prop_assert_eq!(exact.allows(Scheme::Https, &asked, port), asked == granted);
            prop_assert!(!exact.allows(Scheme::Http, &granted, port));

            let wildcard = AllowedHost::parse(&format!("https://*.{granted}:{port}")).unwrap();
            let below = format!("{prefix}.{granted}");
            prop_assert!(wildcard.allows(Scheme::Https, &below, port));
            prop_assert!(!wildcard.allows(Scheme::Https, &granted, port));
            prop_assert_eq!(
                wildcard.allows(Scheme::Https, &asked, port),
                asked.ends_with(&format!(".{granted}"))
            );
            let glued = format!("{prefix}{granted}");
            prop_assert!(!wildcard.allows(Scheme::Https, &glued, port));
        }

        /// An entry covers another only if it allows every request the
        /// other does: a name it allows, or subdomains below its own.
        #[test]
        fn covering_entries_allow_all_the_covered_entry_allows(
            granted in name(), asked in name(), prefix in label(), port in 1u16..,
        ) {
            let parse = |entry: String| AllowedHost::parse(&entry).unwrap();
            let wildcard = parse(format!("https://*.{granted}:{port}"));
            let entries = [
                parse(format!("https://{granted}:{port}")),
                parse(format!("https://{prefix}.{granted}:{port}")),
                parse(format!("https://*.{prefix}.{granted}:{port}")),
                parse(format!("https://{asked}:{port}")),
                parse(format!("https://*.{asked}:{port}")),
                parse(format!("http://{prefix}.{granted}:{port}")),
                wildcard.clone(),
            ];
            let probes = [
                granted.clone(),
                asked.clone(),
                format!("{prefix}.{granted}"),
                format!("{prefix}.{prefix}.{granted}"),
                format!("{prefix}.{asked}"),
            ];
            for a in &entries {
                prop_assert!(a.covers(a));
                for b in &entries {
                    if !a.covers(b) {
                        continue;
                    }
                    for probe in &probes {
                        for scheme in [Scheme::Http, Scheme::Https] {
                            prop_assert!(!b.allows(scheme, probe, port) || a.allows(scheme, probe, port));
                        }
                    }
                }
            }
            prop_assert!(wildcard.covers(&entries[1]) && wildcard.covers(&entries[2]));
            prop_assert!(!wildcard.covers(&entries[0]) && !wildcard.covers(&entries[5]));
        }

        /// Parsing never panics, and what parses prints back to an
        /// entry that parses to the same thing.
        #[test]
        fn any_text_parses_or_is_refused_and_round_trips(entry in "\\PC{0,60}") {
            if let Ok(parsed) = AllowedHost::parse(&entry) {
                prop_assert_eq!(AllowedHost::parse(&parsed.to_string()).unwrap(), parsed);
            }
        }

        /// An address entry allows its address on its port only.
        #[test]
        fn address_entries_allow_their_address_only(
            a in any::<std::net::Ipv4Addr>(), b in any::<std::net::Ipv4Addr>(), port in 1u16..,
        ) {
            let entry = AllowedHost::parse(&format!("http://{a}:{port}")).unwrap();
            prop_assert!(entry.allows(Scheme::Http, &a.to_string(), port));
            prop_assert_eq!(entry.allows(Scheme::Http, &b.to_string(), port), a == b);
        }
    }
}
