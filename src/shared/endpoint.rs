//! Endpoint safety: by default herald only talks to `https://` push services on
//! public addresses, so a registered "subscription" cannot point it at an
//! internal service. The sink's `http://127.0.0.1` endpoints need
//! `push.allow_insecure_endpoints = true`.

use std::net::IpAddr;

use url::{Host, Url};

/// What an endpoint may be: the settings that decide it.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `push.allow_insecure_endpoints`: http, private addresses, any port.
    pub allow_insecure: bool,
    /// `push.allowed_ports`.
    pub ports: Vec<u16>,
    /// With `push.known_services_only`: the hosts (and their subdomains) allowed.
    pub known_services: Option<Vec<String>>,
}

impl Rules {
    pub fn from_settings(push: &crate::shared::config::PushSettings) -> Rules {
        Rules {
            allow_insecure: push.allow_insecure_endpoints,
            ports: push.allowed_ports.clone(),
            known_services: push.known_services_only.then(|| {
                push.known_services
                    .iter()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            }),
        }
    }

    /// The defaults: public https on port 443.
    pub fn strict() -> Rules {
        Rules {
            allow_insecure: false,
            ports: vec![443],
            known_services: None,
        }
    }
}

/// Parses and checks an endpoint; the error says what is wrong with it.
pub fn check(endpoint: &str, rules: &Rules) -> Result<Url, String> {
    let allow_insecure = rules.allow_insecure;
    if endpoint.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    let url = Url::parse(endpoint).map_err(|e| format!("not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    let host = url.host().ok_or("must have a host")?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        "http" => {
            return Err(
                "must be https:// (plain http needs push.allow_insecure_endpoints = true)".into(),
            );
        }
        other => return Err(format!("scheme {other}:// is not a push service")),
    }
    if !allow_insecure {
        let port = url.port_or_known_default().unwrap_or(0);
        if !rules.ports.contains(&port) {
            return Err(format!(
                "port {port} is not one push services use (push.allowed_ports = {:?})",
                rules.ports
            ));
        }
    }
    if let Some(known) = &rules.known_services {
        let name = match &host {
            Host::Domain(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            _ => String::new(),
        };
        let listed = known
            .iter()
            .any(|k| name == *k || name.ends_with(&format!(".{k}")));
        if !listed {
            return Err(format!(
                "{host} is not a known push service (push.known_services_only is on; push.known_services lists them)"
            ));
        }
    }
    if !allow_insecure && !is_public_host(&host) {
        return Err(
            "must be on a public address (loopback, private and link-local need push.allow_insecure_endpoints = true)"
                .into(),
        );
    }
    Ok(canonical(url))
}

/// One spelling per endpoint (RFC 3986 §6.2.2), so that a subscription's id,
/// a digest of it, is the same however a caller spells the same URL:
/// percent-encoded unreserved characters decoded, the other escapes in upper
/// case, an empty query dropped, a trailing dot of the host dropped. (The
/// host is lowercased and a default port dropped by the parser already.)
fn canonical(mut url: Url) -> Url {
    // `push.example.net.` is the same name to DNS: one spelling, without the dot.
    if let Some(Host::Domain(name)) = url.host() {
        if name.ends_with('.') {
            let bare = name.trim_end_matches('.').to_string();
            let _ = url.set_host(Some(&bare));
        }
    }
    let path = normalize_escapes(url.path());
    url.set_path(&path);
    match url.query().map(normalize_escapes) {
        Some(query) if query.is_empty() => url.set_query(None),
        Some(query) => url.set_query(Some(&query)),
        None => {}
    }
    url
}

fn normalize_escapes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let byte = (hi * 16 + lo) as u8;
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    out.push(byte as char);
                } else {
                    out.push('%');
                    out.push(bytes[i + 1].to_ascii_uppercase() as char);
                    out.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // Whole characters: the text is a URL's, ASCII after parsing.
        let c = text[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Registration lookups at once; beyond them, names are checked at send only.
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);

/// How long registration waits for an endpoint's name to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// At registration, a name is resolved too, and refused when any of its
/// addresses is not public. A name that does not resolve (yet, or not from
/// here) is accepted: every push resolves it again and connects only to
/// public addresses.
pub async fn check_resolved(url: &Url, rules: &Rules) -> Result<(), String> {
    let Some(Host::Domain(name)) = url.host() else {
        return Ok(());
    };
    // The allowlist names the push services already.
    if rules.allow_insecure || rules.known_services.is_some() {
        return Ok(());
    }
    // A lookup outlives its timeout on a blocking thread (getaddrinfo cannot
    // be cancelled): a few at once, so slow names cannot take every thread.
    let Ok(_permit) = LOOKUPS.try_acquire() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::net::lookup_host((name, port));
    let Ok(Ok(addrs)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await else {
        return Ok(());
    };
    for addr in addrs {
        if !is_public_ip(addr.ip()) {
            return Err(format!(
                "{name} resolves to {}, not a public address (push.allow_insecure_endpoints allows it, for tests only)",
                addr.ip()
            ));
        }
    }
    Ok(())
}

/// `scheme://host[:port]`: the VAPID audience and the key of per-service state.
/// The port is kept when it is not the scheme's default (RFC 8292 §2).
pub fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn is_public_host(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            !(name == "localhost"
                || name.ends_with(".localhost")
                || name.ends_with(".internal")
                || name.ends_with(".local"))
        }
        Host::Ipv4(ip) => is_public_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => is_public_ip(IpAddr::V6(*ip)),
    }
}

/// True for addresses routable on the public internet. IPv6 forms that carry
/// an IPv4 address (IPv4-mapped and -compatible, NAT64 `64:ff9b::/96` and
/// `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`) are judged by the
/// IPv4 address they lead to.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT) 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0/24
                || (o[0] == 192 && o[1] == 88 && o[2] == 99) // deprecated 6to4 relay anycast
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
                || o[0] >= 240) // reserved, and 255.255.255.255
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return is_public_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
                || (s[0] == 0x3fff && s[1] < 0x1000) // documentation 3fff::/20
                || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard 100::/64
                || (s[0] == 0x2001 && s[1] < 0x0200)) // IETF assignments 2001::/23 (Teredo handled above)
        }
    }
}

/// The IPv4 address an IPv6 address leads to, for the forms that embed one.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let s = v6.segments();
    let o = v6.octets();
    let at = |i: usize| Ipv4Addr::new(o[i], o[i + 1], o[i + 2], o[i + 3]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(at(12)); // ::a.b.c.d (IPv4-compatible, deprecated)
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(at(12)); // NAT64 well-known prefix 64:ff9b::/96
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        return Some(at(12)); // local-use NAT64 64:ff9b:1::/48 (RFC 6052 suffix form)
    }
    if s[0] == 0x2002 {
        return Some(at(2)); // 6to4 2002:aabb:ccdd::/48
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo 2001:0::/32: the client's IPv4 is the last 32 bits, inverted.
        let c = at(12).octets();
        return Some(Ipv4Addr::new(!c[0], !c[1], !c[2], !c[3]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_one_endpoint_is_one_url() {
        let rules = Rules::strict();
        let one = |e: &str| check(e, &rules).expect(e).to_string();
        let plain = one("https://push.example.net/p/AbC-1");
        for spelling in [
            "https://push.example.net/p/AbC-1?",
            "https://PUSH.example.net:443/p/%41bC-1",
            "https://push.example.net/p/A%62C%2d1",
            "https://push.example.net./p/AbC-1",
            "https://push.example.net../p/AbC-1",
        ] {
            assert_eq!(one(spelling), plain, "{spelling}");
        }
        // Reserved characters stay escaped (in upper case); queries are kept.
        assert_eq!(
            one("https://db5.notify.windows.com/w/?token=AbC%2b%2fx%41"),
            "https://db5.notify.windows.com/w/?token=AbC%2B%2FxA"
        );
    }

    #[test]
    fn the_origin_keeps_a_non_default_port() {
        let url = Url::parse("http://127.0.0.1:8090/push/abc").expect("url");
        assert_eq!(origin(&url), "http://127.0.0.1:8090");
        let url = Url::parse("https://fcm.googleapis.com:443/fcm/send/x").expect("url");
        assert_eq!(origin(&url), "https://fcm.googleapis.com");
        let url = Url::parse("https://push.example.net:8443/x").expect("url");
        assert_eq!(origin(&url), "https://push.example.net:8443");
    }

    #[test]
    fn only_public_https_is_accepted_by_default() {
        assert!(check(
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            &Rules::strict()
        )
        .is_ok());
        for bad in [
            "http://push.example.net/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://localhost/x",
            "https://user:pw@push.example.net/x",
            "ftp://push.example.net/x",
        ] {
            assert!(
                check(bad, &Rules::strict()).is_err(),
                "{bad} must be refused"
            );
        }
        let open = Rules {
            allow_insecure: true,
            ports: vec![443],
            known_services: None,
        };
        assert!(check("http://127.0.0.1:8090/push/1", &open).is_ok());
        assert!(check("ftp://127.0.0.1/x", &open).is_err());
        // Other ports than 443 only when the operator allows them.
        let strict = Rules::strict();
        assert!(check("https://push.example.net:8443/x", &strict).is_err());
        assert!(check("https://push.example.net:22/x", &strict).is_err());
        assert!(check("https://push.example.net:443/x", &strict).is_ok());
        let wider = Rules {
            allow_insecure: false,
            ports: vec![443, 8443],
            known_services: None,
        };
        assert!(check("https://push.example.net:8443/x", &wider).is_ok());
        // With the allowlist on: the known services and their subdomains only.
        let known = Rules::from_settings(&crate::shared::config::PushSettings {
            known_services_only: true,
            ..Default::default()
        });
        for ok in [
            "https://fcm.googleapis.com/fcm/send/abc",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://web.push.apple.com/QGx",
            "https://wns2-par02p.notify.windows.com/w/?token=x",
            "https://FCM.googleapis.com./fcm/send/abc",
        ] {
            assert!(check(ok, &known).is_ok(), "{ok}");
        }
        for bad in [
            "https://push.example.net/x",
            "https://fcm.googleapis.com.evil.example/x",
            "https://evilfcm.googleapis.com.example/x",
            "https://notify.windows.com.example/x",
            "https://142.250.74.106/x",
        ] {
            assert!(check(bad, &known).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_that_lead_inside_are_refused_in_every_form() {
        let refused = [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",      // CGNAT
            "198.18.0.1",      // benchmarking
            "198.19.255.255",  // benchmarking
            "192.0.0.8",       // IETF assignments
            "224.0.0.251",     // multicast
            "239.255.255.250", // multicast
            "240.0.0.1",       // reserved
            "255.255.255.255", // broadcast
            "0.0.0.0",
            "192.0.2.1", // documentation
            "::1",
            "::",
            "::ffff:127.0.0.1", // IPv4-mapped
            "::ffff:169.254.169.254",
            "::10.0.0.1",                           // IPv4-compatible
            "64:ff9b::7f00:1",                      // NAT64 of 127.0.0.1
            "64:ff9b::a9fe:a9fe",                   // NAT64 of 169.254.169.254
            "64:ff9b:1::a00:1",                     // local-use NAT64 of 10.0.0.1
            "2002:7f00:1::1",                       // 6to4 of 127.0.0.1
            "2002:c0a8:101::",                      // 6to4 of 192.168.1.1
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo of 127.0.0.1 (inverted)
            "fd00::1",
            "fe80::1",
            "ff02::1",     // multicast
            "2001:db8::1", // documentation
            "100::1",      // discard
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().expect(ip);
            assert!(!is_public_ip(ip), "{ip} must be refused");
        }
        let public = [
            "142.250.74.106",
            "8.8.8.8",
            "2a00:1450:4001:82b::200a",
            "64:ff9b::808:808",                     // NAT64 of 8.8.8.8
            "2002:808:808::1",                      // 6to4 of 8.8.8.8
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo of 8.8.8.8
            "::ffff:8.8.8.8",
        ];
        for ip in public {
            let ip: IpAddr = ip.parse().expect(ip);
            assert!(is_public_ip(ip), "{ip} is public");
        }
    }
}
