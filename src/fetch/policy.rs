//! The outbound address policy: which destinations downloads and callbacks may
//! reach. By default only public addresses; private ones only when the operator
//! allows them (`KUIPER_ALLOW_PRIVATE_NETWORK`, `KUIPER_ALLOWED_HOSTS`).
//!
//! The check runs twice: on every URL (the first and each redirect hop), where
//! IP-literal hosts and the ports of listed names are decided, and in the DNS
//! resolver, where the addresses a name resolves to are decided: the client
//! connects only to addresses that passed, so DNS rebinding cannot slip a
//! private address in. The resolver never sees the port, so it trusts every
//! listed name, and the URL check refuses a name on a port it is not listed
//! with.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

/// Which destinations are allowed.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Allow every destination, private or not.
    pub allow_private: bool,
    /// Hosts allowed whatever their addresses: `host` (any port) or
    /// `host:port` (that port only; a name listed with ports only is refused
    /// on any other port).
    pub allowed_hosts: Vec<String>,
}

/// A refused destination. Its text is what the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {0} is not a public address (set KUIPER_ALLOW_PRIVATE_NETWORK or KUIPER_ALLOWED_HOSTS to allow it)")]
pub struct Refused(pub String);

/// Why `ip` is not a public address, or `None` when it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    const NETS: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    if ip == Ipv4Addr::BROADCAST {
        return Some("broadcast");
    }
    NETS.iter()
        .find(|(net, bits, _)| in_v4(ip, *net, *bits))
        .map(|(_, _, why)| *why)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that carry an IPv4 address are judged by that address:
    // IPv4-mapped (::ffff:a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d),
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::a.b.c.d), 6to4
    // (2002:AABB:CCDD::/48) and Teredo (2001:0:SSSS:SSSS:_:_:CCCC:CCCC, the
    // server's address and the client's, inverted: both must be public).
    let low = Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    if seg[..6] == [0, 0, 0, 0, 0xffff, 0] || seg[..6] == [0, 0, 0, 0, 0, 0] {
        return v4_reason(low);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(low);
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        // Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on
        // the operator's prefix length, so it cannot be judged.
        return Some("local-use NAT64");
    }
    if seg[0] == 0x2002 {
        return v4_reason(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32));
    }
    if seg[..2] == [0x2001, 0] {
        let server = Ipv4Addr::from(((seg[2] as u32) << 16) | seg[3] as u32);
        return v4_reason(server).or_else(|| v4_reason(Ipv4Addr::from(!u32::from(low))));
    }
    match seg[0] {
        // The rest of ::/8 is reserved (RFC 4291): never a public destination.
        s if s & 0xff00 == 0 => Some("reserved"),
        s if s & 0xfe00 == 0xfc00 => Some("unique-local"),
        s if s & 0xffc0 == 0xfe80 => Some("link-local"),
        s if s & 0xffc0 == 0xfec0 => Some("site-local"),
        s if s & 0xff00 == 0xff00 => Some("multicast"),
        0x2001 if seg[1] == 0x0db8 => Some("documentation"),
        0x0100 if seg[1..4] == [0, 0, 0] => Some("discard-only"),
        _ => None,
    }
}

/// The host of an allowed-hosts entry: an address, or a name in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum EntryHost {
    Ip(IpAddr),
    Name(String),
}

/// One `KUIPER_ALLOWED_HOSTS` entry: `host` (any port) or `host:port` (that
/// port only); an IPv6 address with a port is written `[addr]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostEntry {
    host: EntryHost,
    port: Option<u16>,
}

impl HostEntry {
    /// Parses an entry. A port that is not a number leaves the entry naming
    /// a host no URL has, so it allows nothing.
    fn parse(entry: &str) -> Self {
        let entry = entry.trim().to_ascii_lowercase();
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            match rest.split_once(']') {
                Some((host, "")) => (host.to_string(), None),
                Some((host, tail)) => match tail.strip_prefix(':').map(str::parse::<u16>) {
                    Some(Ok(port)) => (host.to_string(), Some(port)),
                    _ => (entry.clone(), None),
                },
                None => (entry.clone(), None),
            }
        } else {
            match entry.rsplit_once(':') {
                // More than one colon: a bare IPv6 address, which has no port.
                Some((host, _)) if host.contains(':') => (entry.clone(), None),
                Some((host, port)) => match port.parse::<u16>() {
                    Ok(port) => (host.to_string(), Some(port)),
                    Err(_) => (entry.clone(), None),
                },
                None => (entry.clone(), None),
            }
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => EntryHost::Ip(ip),
            Err(_) => EntryHost::Name(host),
        };
        HostEntry { host, port }
    }

    fn allows_port(&self, port: Option<u16>) -> bool {
        self.port.is_none() || self.port == port
    }
}

impl AddressPolicy {
    fn entries(&self) -> impl Iterator<Item = HostEntry> + '_ {
        self.allowed_hosts.iter().map(|e| HostEntry::parse(e))
    }

    /// Checks a URL about to be requested (the first one or a redirect hop):
    /// http(s) only; an IP-literal host must be public unless allowed; a name
    /// listed with ports only is refused on any other port. Other names are
    /// checked when they are resolved.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "scheme {} is not allowed (http or https only)",
                url.scheme()
            ));
        }
        if self.allow_private {
            return Ok(());
        }
        let port = url.port_or_known_default();
        let ip = match url.host() {
            None => return Err("the URL has no host".into()),
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(Host::Domain(name)) => return self.check_name(name, port),
        };
        let host = EntryHost::Ip(ip);
        if self
            .entries()
            .any(|e| e.host == host && e.allows_port(port))
        {
            return Ok(());
        }
        match non_public_reason(ip) {
            Some(_) => Err(Refused(ip.to_string()).to_string()),
            None => Ok(()),
        }
    }

    /// A name listed only with ports may be reached on those ports only: the
    /// resolver trusts every listed name, whatever port it is asked for.
    fn check_name(&self, name: &str, port: Option<u16>) -> Result<(), String> {
        let host = EntryHost::Name(name.to_ascii_lowercase());
        let listed: Vec<HostEntry> = self.entries().filter(|e| e.host == host).collect();
        if listed.is_empty() || listed.iter().any(|e| e.allows_port(port)) {
            return Ok(());
        }
        let mut ports: Vec<u16> = listed.iter().filter_map(|e| e.port).collect();
        ports.sort_unstable();
        ports.dedup();
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let shown = port.map_or_else(|| name.to_string(), |p| format!("{name}:{p}"));
        Err(format!(
            "destination {shown} is not allowed (KUIPER_ALLOWED_HOSTS allows {name} on port {} only)",
            ports.join(", ")
        ))
    }

    /// The resolver that enforces this policy on names.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            allow_private: self.allow_private,
            allowed_names: self
                .entries()
                .filter_map(|e| match e.host {
                    EntryHost::Name(name) => Some(name),
                    EntryHost::Ip(_) => None,
                })
                .collect(),
        })
    }
}

/// A DNS resolver that refuses names resolving to non-public addresses.
#[derive(Debug)]
pub struct GuardedResolver {
    allow_private: bool,
    allowed_names: HashSet<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        // Every listed name, with a port or not: `check_url` has already
        // refused a name on a port it is not listed with.
        let trusted = self.allow_private || self.allowed_names.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !trusted {
                if let Some(bad) = addrs.iter().find(|a| non_public_reason(a.ip()).is_some()) {
                    return Err(Box::new(Refused(bad.ip().to_string()))
                        as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        non_public_reason(s.parse().unwrap())
    }

    #[test]
    fn classifies_addresses() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.2", "loopback"),
            ("10.0.0.5", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.254", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fc00::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("2002:c0a8:0101::1", "private"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a9fe:a9fe:1::1", "link-local"),
            // IPv4-translated (RFC 2765): ::ffff:0:a.b.c.d.
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::ffff:0:a9fe:a9fe", "link-local"),
            ("::ffff:0:10.0.0.5", "private"),
            // Local-use NAT64 (RFC 8215), whatever it carries.
            ("64:ff9b:1::a00:1", "local-use NAT64"),
            ("64:ff9b:1:ffff::808:808", "local-use NAT64"),
            ("64:ff9b:1::8.8.8.8", "local-use NAT64"),
            // Teredo: server 127.0.0.1, or client 127.0.0.1 (inverted: 80ff:fffe).
            ("2001:0:7f00:1::1", "loopback"),
            ("2001:0:808:808:0:0:80ff:fffe", "loopback"),
            ("2001:0:808:808::f5ff:fffa", "private"),
            // The rest of ::/8.
            ("::1:0:0:7f00:1", "reserved"),
            ("64:ff9b:0:1::808:808", "reserved"),
        ] {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "169.253.0.1",
            "::ffff:0:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            // Teredo with public server 8.8.8.8 and client 1.1.1.1 (inverted).
            "2001:0:808:808:0:0:fefe:fefe",
        ] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn numeric_host_tricks_are_caught() {
        let p = AddressPolicy::default();
        for u in [
            "http://2130706433/a.zip",
            "http://0177.0.0.1/a.zip",
            "http://0x7f.0.0.1/a.zip",
            "http://0x7f000001/a.zip",
            "http://127.1/a.zip",
            "http://[::ffff:127.0.0.1]/a.zip",
            "http://[::ffff:7f00:1]/a.zip",
            "http://169.254.169.254/latest/meta-data/a.zip",
            "http://[fd00:ec2::254]/a.zip",
            "http://[::ffff:0:7f00:1]/a.zip",
            "http://[64:ff9b:1::a9fe:a9fe]/a.zip",
            "http://[2001:0:a9fe:a9fe::1]/a.zip",
            "http://[2002:7f00:1::1]/a.zip",
            "http://10.0.0.5/a.zip",
            "http://0/a.zip",
        ] {
            let url = Url::parse(u).unwrap();
            let e = p.check_url(&url).unwrap_err();
            assert!(e.contains("is not a public address"), "{u}: {e}");
        }
        let e = p
            .check_url(&Url::parse("http://10.0.0.5/a.zip").unwrap())
            .unwrap_err();
        assert_eq!(e, "destination 10.0.0.5 is not a public address (set KUIPER_ALLOW_PRIVATE_NETWORK or KUIPER_ALLOWED_HOSTS to allow it)");
        assert!(p
            .check_url(&Url::parse("http://8.8.8.8/a.zip").unwrap())
            .is_ok());
        assert!(p
            .check_url(&Url::parse("ftp://8.8.8.8/a.zip").unwrap())
            .is_err());
    }

    #[test]
    fn allowed_hosts_are_exact() {
        let p = AddressPolicy {
            allow_private: false,
            allowed_hosts: vec![
                "127.0.0.1:8080".into(),
                "10.0.0.5".into(),
                "[::1]:9000".into(),
            ],
        };
        let ok = |u: &str| p.check_url(&Url::parse(u).unwrap()).is_ok();
        assert!(ok("http://127.0.0.1:8080/a.zip"));
        assert!(!ok("http://127.0.0.1:8081/a.zip"));
        assert!(!ok("http://127.0.0.2:8080/a.zip"));
        assert!(ok("http://10.0.0.5/a.zip"));
        assert!(ok("http://10.0.0.5:99/a.zip"));
        assert!(ok("http://[::1]:9000/a.zip"));
        assert!(!ok("http://[::1]:9001/a.zip"));
        assert!(
            ok("http://[0:0::1]:9000/a.zip"),
            "addresses compare as addresses"
        );
        // A name with a port: that port only (the resolver trusts the name).
        let p = AddressPolicy {
            allow_private: false,
            allowed_hosts: vec![
                "files.internal:8080".into(),
                " Files.Internal:8443 ".into(),
                "any.internal".into(),
                "localhost:80".into(),
            ],
        };
        let check = |u: &str| p.check_url(&Url::parse(u).unwrap());
        assert!(check("http://files.internal:8080/a.zip").is_ok());
        assert!(check("https://FILES.internal:8443/a.zip").is_ok());
        assert_eq!(
            check("http://files.internal:8081/a.zip").unwrap_err(),
            "destination files.internal:8081 is not allowed (KUIPER_ALLOWED_HOSTS allows files.internal on port 8080, 8443 only)"
        );
        assert!(check("https://files.internal/a.zip")
            .unwrap_err()
            .starts_with("destination files.internal:443 is not allowed"));
        assert!(check("http://localhost/a.zip").is_ok(), "80 is http's port");
        assert!(check("https://localhost/a.zip").is_err());
        assert!(check("http://any.internal:1/a.zip").is_ok());
        assert!(
            check("http://public.example:1/a.zip").is_ok(),
            "checked when resolved"
        );
        let names = &p.resolver().allowed_names;
        assert!(names.contains("files.internal") && names.contains("any.internal"));
        assert!(!names.contains("public.example"));
        let open = AddressPolicy {
            allow_private: true,
            allowed_hosts: vec![],
        };
        assert!(open
            .check_url(&Url::parse("http://127.0.0.1/a.zip").unwrap())
            .is_ok());
    }
}
