//! Which addresses a peer (a client's webhook, a plugin's HTTP request) may
//! make us connect to: ordinary public addresses. Every special-purpose
//! range of the IANA IPv4 and IPv6 registries that is not globally
//! reachable ([`SPECIAL_PURPOSE`]: loopback, private, shared, link-local
//! with the cloud-metadata address, benchmarking, documentation, reserved,
//! multicast, unique-local, discard, the IETF protocol assignments with
//! Teredo, IPv4-compatible addresses …) is not, and neither is an address
//! that embeds such an IPv4 address (IPv4-mapped `::ffff:0:0/96`, NAT64
//! `64:ff9b::/96`, 6to4 `2002::/16`), unless the operator allows it
//! explicitly. Used by the orchestrator (webhooks) and the worker host
//! (plugins' outbound HTTP).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// The ranges that are not public, with their registry names (a range
/// inside another comes first, so its own name is given).
pub const SPECIAL_PURPOSE: &[(&str, &str)] = &[
    // IPv4 (RFC 6890 and the IANA IPv4 Special-Purpose Address Registry).
    ("0.0.0.0/8", "\"this network\""),
    ("10.0.0.0/8", "private use"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private use"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "limited broadcast"),
    ("240.0.0.0/4", "reserved"),
    // IPv6 (the IANA IPv6 Special-Purpose Address Registry).
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    (
        "2001::/23",
        "IETF protocol assignments (Teredo, benchmarking, ORCHID)",
    ),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

static RANGES: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    SPECIAL_PURPOSE
        .iter()
        .filter_map(|(net, name)| Some((net.parse().ok()?, *name)))
        .collect()
});

/// Whether `ip` is an ordinary public address.
pub fn is_public(ip: IpAddr) -> bool {
    why_not_public(ip).is_none()
}

/// Why `ip` is not public (the special-purpose range it is in, or the one
/// of the IPv4 address it embeds), `None` for a public address.
pub fn why_not_public(ip: IpAddr) -> Option<String> {
    if let IpAddr::V6(v6) = ip
        && let Some((form, v4)) = embedded_v4(v6)
    {
        return why_not_public(IpAddr::V4(v4)).map(|why| format!("{form} of {v4}: {why}"));
    }
    RANGES
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(net, name)| format!("{name}, {net}"))
}

/// The IPv4 address an IPv6 address carries, in the forms that reach it:
/// IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4
/// (`2002:AABB:CCDD::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(("IPv4-mapped form", v4));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(("NAT64 form", low));
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return Some(("6to4 form", v4));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every range of the table: its first and last address are refused,
    /// with the range's name.
    #[test]
    fn each_special_purpose_range_is_refused_from_end_to_end() {
        assert_eq!(
            RANGES.len(),
            SPECIAL_PURPOSE.len(),
            "a range does not parse"
        );
        for (net, name) in RANGES.iter() {
            for ip in [net.network(), net.broadcast()] {
                let why = why_not_public(ip).unwrap_or_else(|| panic!("{ip} ({name}) is public"));
                assert!(why.contains(','), "{ip}: {why}");
            }
        }
    }

    #[test]
    fn the_forms_an_outside_review_found_are_refused() {
        for (ip, expected) in [
            (
                "64:ff9b::a9fe:a9fe",
                "NAT64 form of 169.254.169.254: link-local",
            ),
            ("::7f00:1", "IPv4-compatible"),
            ("198.18.0.1", "benchmarking"),
            ("240.0.0.1", "reserved"),
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped form of 127.0.0.1: loopback",
            ),
            ("::ffff:10.0.0.1", "private use"),
            ("2002:7f00:1::1", "6to4 form of 127.0.0.1: loopback"),
            ("2002:a9fe:a9fe::", "link-local"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:2::1", "IETF protocol assignments"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("100::1", "discard-only"),
            ("3fff::1", "documentation"),
            ("100.64.0.1", "shared address space"),
            ("192.0.0.170", "IETF protocol assignments"),
            ("255.255.255.255", "limited broadcast"),
            ("0.1.2.3", "this network"),
        ] {
            let why = why_not_public(ip.parse().unwrap())
                .unwrap_or_else(|| panic!("{ip} was taken for public"));
            assert!(why.contains(expected), "{ip}: {why}");
        }
    }

    #[test]
    fn ordinary_public_addresses_and_their_embedded_forms_are_public() {
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2a00:1450::1",
        ] {
            assert!(
                is_public(ip.parse().unwrap()),
                "{ip}: {:?}",
                why_not_public(ip.parse().unwrap())
            );
        }
    }
}
