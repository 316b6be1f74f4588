//! The [`Resolver`]: hickory-resolver talks to the configured servers, the
//! [`Cache`] sits in front of it, and each answer is turned into the
//! `posthorn.resolver.v1` reply messages (the in-process API and the gRPC
//! API answer the same).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig, ResolverOpts,
    ServerOrderingStrategy,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use posthorn_config::ResolverConfig;
use posthorn_proto::resolver::v1 as pb;

use crate::cache::{Answer, Cache, Outcome};

/// A request name that is not a valid domain name (gRPC INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name: {0}")]
pub struct InvalidName(pub String);

/// Cached DNS lookups against the configured servers.
pub struct Resolver {
    dns: TokioResolver,
    cache: Cache,
    nameservers: Vec<SocketAddr>,
}

impl Resolver {
    /// Build from `[resolver]`: its `nameservers` (else those of
    /// `/etc/resolv.conf`, else `127.0.0.1:53` as glibc does), `timeout_secs`,
    /// `attempts` and `cache_size`. hickory's own cache is off: ours is the
    /// only one.
    pub fn new(cfg: &ResolverConfig) -> Result<Self, String> {
        let mut servers = Vec::new();
        for ns in &cfg.nameservers {
            servers.push(posthorn_config::parse_nameserver(ns).ok_or_else(|| {
                format!("resolver.nameservers: `{ns}` is not an `ip:port` address")
            })?);
        }
        if servers.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            servers = resolv_conf_nameservers(&text);
        }
        if servers.is_empty() {
            servers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        let config = HickoryConfig::from_name_servers(
            servers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect(),
        );
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        // hickory counts retries after the first try; resolv.conf counts tries.
        opts.attempts = (cfg.attempts.max(1) - 1) as usize;
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
        let dns = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| format!("resolver: {e}"))?;
        Ok(Resolver {
            dns,
            cache: Cache::new(usize::try_from(cfg.cache_size).unwrap_or(usize::MAX)),
            nameservers: servers,
        })
    }

    /// The servers asked, in order.
    pub fn nameservers(&self) -> &[SocketAddr] {
        &self.nameservers
    }

    /// The A and AAAA records of `host`.
    pub async fn lookup_ip(&self, host: &str) -> Result<pb::LookupIpResponse, InvalidName> {
        let started = Instant::now();
        let name = parse_name(host)?;
        let (addresses, answer) = self.addresses(&name).await;
        observe("ip", started, &answer);
        Ok(pb::LookupIpResponse {
            answer: Some(answer),
            addresses: addresses.iter().map(IpAddr::to_string).collect(),
        })
    }

    /// The TXT records of `name`.
    pub async fn lookup_txt(&self, name: &str) -> Result<pb::LookupTxtResponse, InvalidName> {
        let started = Instant::now();
        let a = self.query(&parse_name(name)?, RecordType::TXT).await;
        let records = records(&a)
            .filter_map(|r| match r {
                RData::TXT(t) => Some(pb::TxtRecord {
                    strings: t.txt_data.iter().map(|s| s.to_vec()).collect(),
                }),
                _ => None,
            })
            .collect();
        let answer = pb_answer(&[&a]);
        observe("txt", started, &answer);
        Ok(pb::LookupTxtResponse {
            answer: Some(answer),
            records,
        })
    }

    /// The TLSA records of `name` (e.g. `_25._tcp.mx.example.`).
    pub async fn lookup_tlsa(&self, name: &str) -> Result<pb::LookupTlsaResponse, InvalidName> {
        let started = Instant::now();
        let a = self.query(&parse_name(name)?, RecordType::TLSA).await;
        let records = records(&a)
            .filter_map(|r| match r {
                RData::TLSA(t) => Some(pb::TlsaRecord {
                    usage: u8::from(t.cert_usage).into(),
                    selector: u8::from(t.selector).into(),
                    matching_type: u8::from(t.matching).into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect();
        let answer = pb_answer(&[&a]);
        observe("tlsa", started, &answer);
        Ok(pb::LookupTlsaResponse {
            answer: Some(answer),
            records,
        })
    }

    /// AAAA and A of `name` together: IPv6 then IPv4 addresses, and the
    /// combined answer (OK when either has addresses; see [`pb_answer`]).
    pub(crate) async fn addresses(&self, name: &Name) -> (Vec<IpAddr>, pb::Answer) {
        let (v6, v4) = tokio::join!(
            self.query(name, RecordType::AAAA),
            self.query(name, RecordType::A)
        );
        let addrs: Vec<IpAddr> = records(&v6)
            .chain(records(&v4))
            .filter_map(|r| match r {
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        (addrs, pb_answer(&[&v6, &v4]))
    }

    /// One (name, type) question, from the cache or the servers.
    pub(crate) async fn query(&self, name: &Name, rtype: RecordType) -> Answer {
        let key = name.to_lowercase().to_ascii();
        let label = rtype_label(rtype);
        if let Some(hit) = self.cache.get(&key, rtype, Instant::now()) {
            metrics::counter!("posthorn_resolver_cache_hits_total", "rtype" => label).increment(1);
            return hit;
        }
        metrics::counter!("posthorn_resolver_cache_misses_total", "rtype" => label).increment(1);
        let (outcome, ttl) = classify(self.dns.lookup(name.clone(), rtype).await, rtype);
        if let Outcome::Temporary(why) = &outcome {
            tracing::debug!(tier = "resolver", name = %key, rtype = label, why, "temporary DNS failure");
        }
        self.cache.insert(&key, rtype, outcome, ttl, Instant::now())
    }
}

/// The records of an answer (none unless it is `Records`).
pub(crate) fn records(a: &Answer) -> impl Iterator<Item = &RData> {
    match &*a.outcome {
        Outcome::Records(r) => r.iter(),
        _ => [].iter(),
    }
}

/// Turn hickory's result into an outcome and its TTL.
fn classify(res: Result<Lookup, NetError>, rtype: RecordType) -> (Outcome, u32) {
    match res {
        Ok(lookup) => {
            let found: Vec<RData> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect();
            if found.is_empty() {
                // A CNAME to a name without such records: no SOA kept, so
                // not cached (RFC 2308 §5).
                let nx = lookup.message().metadata.response_code == ResponseCode::NXDomain;
                (
                    if nx {
                        Outcome::NxDomain
                    } else {
                        Outcome::NoRecords
                    },
                    0,
                )
            } else {
                // CNAMEs on the way count: the answer lasts as long as all.
                let ttl = lookup.answers().iter().map(|r| r.ttl).min().unwrap_or(0);
                (Outcome::Records(found), ttl)
            }
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
            let outcome = if nr.response_code == ResponseCode::NXDomain {
                Outcome::NxDomain
            } else {
                Outcome::NoRecords
            };
            // min(SOA TTL, SOA MINIMUM); none without an SOA.
            (outcome, nr.negative_ttl.unwrap_or(0))
        }
        Err(NetError::Dns(DnsError::ResponseCode(code))) => {
            (Outcome::Temporary(rcode_name(code)), 0)
        }
        Err(NetError::Timeout) => (Outcome::Temporary("timeout".into()), 0),
        Err(e) => (Outcome::Temporary(e.to_string()), 0),
    }
}

fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

/// The answer built from several questions: OK if any part has records,
/// else TEMPORARY if any failed so, else NXDOMAIN if any said so, else
/// NO_RECORDS. Its TTL is the smallest of the parts (0 if any part failed
/// temporarily: such an answer must not be kept).
pub(crate) fn pb_answer(parts: &[&Answer]) -> pb::Answer {
    let outcomes = || parts.iter().map(|a| &*a.outcome);
    let temporary = outcomes().find_map(|o| match o {
        Outcome::Temporary(why) => Some(why.clone()),
        _ => None,
    });
    let (result, detail) = if outcomes().any(|o| matches!(o, Outcome::Records(_))) {
        (pb::ResultKind::Ok, String::new())
    } else if let Some(why) = temporary {
        (pb::ResultKind::Temporary, why)
    } else if outcomes().any(|o| *o == Outcome::NxDomain) {
        (pb::ResultKind::Nxdomain, String::new())
    } else {
        (pb::ResultKind::NoRecords, String::new())
    };
    pb::Answer {
        result: result.into(),
        ttl_secs: parts.iter().map(|a| a.ttl).min().unwrap_or(0),
        authenticated: false,
        detail,
    }
}

/// Count a finished lookup and its latency.
pub(crate) fn observe(kind: &'static str, started: Instant, answer: &pb::Answer) {
    let result = match answer.result() {
        pb::ResultKind::Ok => "ok",
        pb::ResultKind::NoRecords => "no_records",
        pb::ResultKind::Nxdomain => "nxdomain",
        pb::ResultKind::Temporary => "temporary",
        pb::ResultKind::NullMx => "null_mx",
        pb::ResultKind::Unspecified => "unspecified",
    };
    metrics::counter!("posthorn_resolver_lookups_total", "type" => kind, "result" => result)
        .increment(1);
    metrics::histogram!("posthorn_resolver_lookup_seconds", "type" => kind)
        .record(started.elapsed().as_secs_f64());
}

fn rtype_label(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::MX => "MX",
        RecordType::TXT => "TXT",
        RecordType::TLSA => "TLSA",
        _ => "other",
    }
}

/// Check and normalise a request name: at most 253 octets (without the
/// trailing dot), labels of 1–63 letters, digits, `-` or `_`. Lower-cased,
/// fully qualified (never searched in local domains).
pub fn parse_name(s: &str) -> Result<Name, InvalidName> {
    let bare = s.strip_suffix('.').unwrap_or(s);
    if bare.is_empty() {
        return Err(InvalidName("empty name".into()));
    }
    if bare.len() > 253 {
        return Err(InvalidName(format!(
            "name of {} octets (at most 253)",
            bare.len()
        )));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(InvalidName(format!(
                "label {label:?} of {} octets (1 to 63) in {s:?}",
                label.len()
            )));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(InvalidName(format!("character {c:?} in {s:?}")));
        }
    }
    Name::from_ascii(format!("{}.", bare.to_ascii_lowercase()))
        .map_err(|e| InvalidName(format!("{s:?}: {e}")))
}

/// The `nameserver` lines of a resolv.conf text (port 53; at most three,
/// as glibc reads).
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            // A link-local `fe80::1%eth0`: the scope is not supported.
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .take(3)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_normalised() {
        assert_eq!(
            parse_name("Mx.Example.COM").unwrap().to_ascii(),
            "mx.example.com."
        );
        assert_eq!(
            parse_name("_25._tcp.mx.example.").unwrap().to_ascii(),
            "_25._tcp.mx.example."
        );
        for bad in ["", ".", "a..b", "a b.example", "é.example", "x\0.example"] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_name(&format!("{}.example", "a".repeat(64))).is_err());
        let long = vec!["a".repeat(63); 4].join("."); // 255 octets
        assert!(parse_name(&long).is_err());
        assert!(parse_name(&long[..253]).is_ok());
    }

    #[test]
    fn resolv_conf_lines() {
        let text = "# c\nsearch example\nnameserver 10.0.0.1\nnameserver ::1\nnameserver fe80::1%eth0\noptions ndots:2\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
