//! Endpoint safety: by default herald only talks to `https://` push services on
//! public addresses, so a registered "subscription" cannot point it at an
//! internal service. The sink's `http://127.0.0.1` endpoints need
//! `push.allow_insecure_endpoints = true`.

use std::net::IpAddr;

use url::{Host, Url};

/// Parses and checks an endpoint; the error says what is wrong with it.
pub fn check(endpoint: &str, allow_insecure: bool) -> Result<Url, String> {
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
    if !allow_insecure && !is_public_host(&host) {
        return Err(
            "must be on a public address (loopback, private and link-local need push.allow_insecure_endpoints = true)"
                .into(),
        );
    }
    Ok(url)
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

/// True for addresses routable on the public internet.
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
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            false
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
            assert!(check(bad, false).is_err(), "{bad} must be refused");
        }
        assert!(check("http://127.0.0.1:8090/push/1", true).is_ok());
        assert!(check("ftp://127.0.0.1/x", true).is_err());
    }
}
