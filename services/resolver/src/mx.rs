//! `LookupMx`: where to deliver mail for a domain, per RFC 5321 §5.1 and
//! RFC 7505 (null MX).

use std::time::Instant;

use futures::future::join_all;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use posthorn_proto::resolver::v1 as pb;
use rand::seq::SliceRandom;

use crate::cache::Outcome;
use crate::lookup::{InvalidName, Resolver, observe, parse_name, pb_answer, records};

impl Resolver {
    /// The MX hosts of `domain`, lowest preference first and in random
    /// order among equal preferences (drawn anew on every call, also from
    /// the cache); with `resolve_addresses`, each host's AAAA and A too.
    ///
    /// - no MX but A/AAAA: the implicit MX, the domain itself at
    ///   preference 0 with its addresses (`implicit` set);
    /// - only MX records whose target is `.`: NULL_MX (RFC 7505; the RFC
    ///   asks for exactly one, preference 0). `.` targets beside real
    ///   hosts are dropped;
    /// - neither MX nor address: NO_RECORDS; no such domain: NXDOMAIN;
    /// - a server failure or timeout on the MX question, or on the address
    ///   questions of an implicit MX: TEMPORARY.
    pub async fn lookup_mx(
        &self,
        domain: &str,
        resolve_addresses: bool,
    ) -> Result<pb::LookupMxResponse, InvalidName> {
        let started = Instant::now();
        let name = parse_name(domain)?;
        let mx = self.query(&name, RecordType::MX).await;
        let mut resp = pb::LookupMxResponse {
            answer: Some(pb_answer(&[&mx])),
            ..Default::default()
        };
        match &*mx.outcome {
            Outcome::Records(_) => {
                let mut hosts: Vec<(u16, Name)> = records(&mx)
                    .filter_map(|r| match r {
                        RData::MX(m) => Some((m.preference, m.exchange.clone())),
                        _ => None,
                    })
                    .collect();
                if hosts.iter().all(|(_, x)| x.is_root()) {
                    let answer = resp.answer.as_mut().expect("set above");
                    answer.set_result(pb::ResultKind::NullMx);
                } else {
                    hosts.retain(|(_, x)| !x.is_root());
                    order(&mut hosts);
                    let mut ttl = mx.ttl;
                    let resolved = if resolve_addresses {
                        join_all(hosts.iter().map(|(_, x)| self.addresses(x))).await
                    } else {
                        Vec::new()
                    };
                    let mut resolved = resolved.into_iter();
                    for (preference, exchange) in &hosts {
                        let mut host = pb::MxHost {
                            preference: (*preference).into(),
                            exchange: host_name(exchange),
                            ..Default::default()
                        };
                        if let Some((addrs, a)) = resolved.next() {
                            host.addresses = addrs.iter().map(ToString::to_string).collect();
                            host.address_result = a.result;
                            ttl = ttl.min(a.ttl_secs);
                        }
                        resp.hosts.push(host);
                    }
                    resp.answer.as_mut().expect("set above").ttl_secs = ttl;
                }
            }
            Outcome::NoRecords => {
                let (addrs, a) = self.addresses(&name).await;
                let mut answer = a.clone();
                answer.ttl_secs = a.ttl_secs.min(mx.ttl);
                match a.result() {
                    pb::ResultKind::Ok => {
                        resp.implicit = true;
                        resp.hosts.push(pb::MxHost {
                            preference: 0,
                            exchange: host_name(&name),
                            addresses: addrs.iter().map(ToString::to_string).collect(),
                            address_result: a.result,
                        });
                    }
                    pb::ResultKind::Temporary => {}
                    // The domain exists (the MX question said so).
                    _ => answer.set_result(pb::ResultKind::NoRecords),
                }
                resp.answer = Some(answer);
            }
            Outcome::NxDomain | Outcome::Temporary(_) => {}
        }
        observe("mx", started, resp.answer.as_ref().expect("set above"));
        Ok(resp)
    }
}

/// Sort by preference, shuffling each run of equal preferences.
fn order(hosts: &mut [(u16, Name)]) {
    hosts.sort_by_key(|(p, _)| *p);
    let mut rng = rand::rng();
    for run in hosts.chunk_by_mut(|a, b| a.0 == b.0) {
        run.shuffle(&mut rng);
    }
}

/// `mx.example.` → `mx.example` (lower case).
fn host_name(n: &Name) -> String {
    let s = n.to_lowercase().to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_sorts_by_preference_and_keeps_runs_together() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let mut hosts = vec![(20, n("c.")), (10, n("a.")), (10, n("b.")), (5, n("z."))];
        order(&mut hosts);
        let prefs: Vec<u16> = hosts.iter().map(|h| h.0).collect();
        assert_eq!(prefs, [5, 10, 10, 20]);
        assert_eq!(hosts[0].1, n("z."));
        assert_eq!(hosts[3].1, n("c."));
    }
}
