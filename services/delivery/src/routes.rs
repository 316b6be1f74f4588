//! Configured next hops: `delivery.relayhost`, `delivery.transports` and
//! the AUTH credentials of `delivery.relay_auth_file` (docs/delivery.md,
//! "Relay host and transports").
//!
//! Lookup order for a recipient domain, as Postfix's `transport_maps` then
//! `relayhost`: the exact domain, then `.parent` keys from the closest
//! parent outwards, then the relay host; none of them: the domain's MX.

use std::collections::HashMap;
use std::path::Path;

use mail_send::Credentials;
use posthorn_config::{DeliveryConfig, NextHop, parse_next_hop};

/// Where remote mail goes when it does not go to the recipient domain's MX.
#[derive(Clone, Default)]
pub struct Routes {
    relayhost: Option<NextHop>,
    transports: HashMap<String, NextHop>,
    credentials: HashMap<String, Credentials<String>>,
    /// `delivery.relay_auth_plaintext`.
    pub auth_plaintext: bool,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords.
        f.debug_struct("Routes")
            .field("relayhost", &self.relayhost)
            .field("transports", &self.transports)
            .field(
                "credentials_for",
                &self.credentials.keys().collect::<Vec<_>>(),
            )
            .field("auth_plaintext", &self.auth_plaintext)
            .finish()
    }
}

impl Routes {
    /// From `[delivery]`, reading `relay_auth_file` (an unreadable or
    /// malformed file is an error: delivery does not start).
    pub fn from_config(d: &DeliveryConfig) -> Result<Routes, String> {
        let relayhost = if d.relayhost.is_empty() {
            None
        } else {
            Some(
                parse_next_hop(&d.relayhost)
                    .ok_or_else(|| format!("delivery.relayhost: bad next hop {}", d.relayhost))?,
            )
        };
        let mut transports = HashMap::new();
        for (domain, hop) in &d.transports {
            let hop = parse_next_hop(hop)
                .ok_or_else(|| format!("delivery.transports.{domain}: bad next hop {hop}"))?;
            transports.insert(normalize_domain(domain), hop);
        }
        let credentials = if d.relay_auth_file.is_empty() {
            HashMap::new()
        } else {
            read_auth_file(Path::new(&d.relay_auth_file))?
        };
        let routes = Routes {
            relayhost,
            transports,
            credentials,
            auth_plaintext: d.relay_auth_plaintext,
        };
        for hop in routes.relayhost.iter().chain(routes.transports.values()) {
            if routes.credentials(hop).is_some() {
                tracing::info!(relay = %hop.spec(), "AUTH credentials configured");
            }
        }
        Ok(routes)
    }

    /// The configured next hop of `domain`, if any.
    pub fn route(&self, domain: &str) -> Option<&NextHop> {
        let domain = normalize_domain(domain);
        if let Some(h) = self.transports.get(&domain) {
            return Some(h);
        }
        let mut rest = domain.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(h) = self.transports.get(&format!(".{parent}")) {
                return Some(h);
            }
            rest = parent;
        }
        self.relayhost.as_ref()
    }

    /// The AUTH credentials of `hop`: the entry for the hop as written
    /// (`[host]:port`), else for it without the port (`[host]`), else for
    /// its bare host name.
    pub fn credentials(&self, hop: &NextHop) -> Option<&Credentials<String>> {
        let portless = NextHop {
            port: None,
            ..hop.clone()
        };
        self.credentials
            .get(&hop.spec())
            .or_else(|| self.credentials.get(&portless.spec()))
            .or_else(|| self.credentials.get(&hop.host))
    }
}

fn normalize_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The key of an auth file line, normalized like a configured next hop.
fn normalize_key(k: &str) -> String {
    parse_next_hop(k)
        .map(|h| h.spec())
        .unwrap_or_else(|| k.to_ascii_lowercase())
}

/// Parse the text of a `relay_auth_file`: `host username password` lines
/// (the password is the rest of the line), `#` comments, blank lines.
pub fn parse_auth_file(text: &str) -> Result<HashMap<String, Credentials<String>>, String> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let host = parts.next().unwrap_or_default();
        let rest = parts.next().unwrap_or_default().trim_start();
        let mut parts = rest.splitn(2, char::is_whitespace);
        let user = parts.next().unwrap_or_default();
        let password = parts.next().unwrap_or_default().trim();
        if user.is_empty() || password.is_empty() {
            // Never echo the line: it may hold a password.
            return Err(format!("line {}: expected `host username password`", n + 1));
        }
        out.insert(
            normalize_key(host),
            Credentials::new(user.to_string(), password.to_string()),
        );
    }
    Ok(out)
}

fn read_auth_file(path: &Path) -> Result<HashMap<String, Credentials<String>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("delivery.relay_auth_file {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o044 != 0
        {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", m.permissions().mode() & 0o777),
                "delivery.relay_auth_file is readable by group or others; it holds passwords (chmod 600, or defaultMode 0400 on a Kubernetes secret volume)"
            );
        }
    }
    parse_auth_file(&text).map_err(|e| format!("delivery.relay_auth_file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_of(c: Option<&Credentials<String>>) -> Option<(&str, &str)> {
        match c? {
            Credentials::Plain { username, secret } => Some((username, secret)),
            _ => None,
        }
    }

    #[test]
    fn transports_before_relayhost_exact_domain_first() {
        let mut d = DeliveryConfig {
            relayhost: "[smtp.provider.example]:587".into(),
            ..Default::default()
        };
        for (k, v) in [
            ("example.com", "exact.example.net:25"),
            (".example.com", "[sub.example.net]"),
            (".deep.example.com", "[deep.example.net]:2525"),
            ("Other.Example.", "[10.0.0.5]:2525"),
        ] {
            d.transports.insert(k.into(), v.into());
        }
        let r = Routes::from_config(&d).unwrap();
        let hop = |dom: &str| r.route(dom).map(|h| h.spec());
        assert_eq!(hop("example.com").as_deref(), Some("exact.example.net:25"));
        assert_eq!(hop("EXAMPLE.com.").as_deref(), Some("exact.example.net:25"));
        assert_eq!(hop("a.example.com").as_deref(), Some("[sub.example.net]"));
        assert_eq!(
            hop("x.deep.example.com").as_deref(),
            Some("[deep.example.net]:2525")
        );
        // `.deep.example.com` is for subdomains only.
        assert_eq!(
            hop("deep.example.com").as_deref(),
            Some("[sub.example.net]")
        );
        assert_eq!(hop("other.example").as_deref(), Some("[10.0.0.5]:2525"));
        assert_eq!(
            hop("elsewhere.test").as_deref(),
            Some("[smtp.provider.example]:587")
        );
        // Without a relay host: the MX.
        d.relayhost.clear();
        let r = Routes::from_config(&d).unwrap();
        assert!(r.route("elsewhere.test").is_none());
        assert!(r.route("notexample.com").is_none());
        assert!(r.route("example.com").is_some());
    }

    #[test]
    fn auth_file_lines_and_lookup() {
        let creds = parse_auth_file(
            "# provider\n\
             [SMTP.provider.example]:587  user@example.com  s3cret with spaces \n\
             \n\
             relay.example   relay-user pw\n\
             [ipv6:2001:db8::1]:25 v6 pw6\n\
             192.0.2.7 ip-user ip-pw\n",
        )
        .unwrap();
        let r = Routes {
            credentials: creds,
            ..Default::default()
        };
        let hop = |s: &str| parse_next_hop(s).unwrap();
        assert_eq!(
            user_of(r.credentials(&hop("[smtp.provider.example]:587"))),
            Some(("user@example.com", "s3cret with spaces"))
        );
        // Another port of that host has no entry of its own, nor a bare one.
        assert_eq!(
            user_of(r.credentials(&hop("[smtp.provider.example]:25"))),
            None
        );
        // The bare host name covers every form of the hop.
        assert_eq!(
            user_of(r.credentials(&hop("[relay.example]:2525"))),
            Some(("relay-user", "pw"))
        );
        assert_eq!(
            user_of(r.credentials(&hop("relay.example"))),
            Some(("relay-user", "pw"))
        );
        assert_eq!(
            user_of(r.credentials(&hop("[2001:db8::1]:25"))),
            Some(("v6", "pw6"))
        );
        // A bare address covers the address on any port.
        assert_eq!(
            user_of(r.credentials(&hop("[192.0.2.7]:2525"))),
            Some(("ip-user", "ip-pw"))
        );
        assert_eq!(
            user_of(r.credentials(&hop("192.0.2.7:25"))),
            Some(("ip-user", "ip-pw"))
        );
        let err = parse_auth_file("relay.example only-a-user\n")
            .err()
            .unwrap();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("only-a-user"), "{err}");
    }

    #[test]
    fn auth_file_is_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("relay_auth");
        std::fs::write(&f, "[relay.example]:587 u p\n").unwrap();
        let d = DeliveryConfig {
            relayhost: "[relay.example]:587".into(),
            relay_auth_file: f.display().to_string(),
            ..Default::default()
        };
        let r = Routes::from_config(&d).unwrap();
        let hop = r.route("any.where").unwrap().clone();
        assert_eq!(user_of(r.credentials(&hop)), Some(("u", "p")));
        let d = DeliveryConfig {
            relay_auth_file: dir.path().join("missing").display().to_string(),
            ..Default::default()
        };
        let err = Routes::from_config(&d).unwrap_err();
        assert!(err.contains("relay_auth_file"), "{err}");
    }
}
