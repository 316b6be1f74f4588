//! One outbound item: look up the next hops, try them in order, and settle
//! the item (docs/delivery.md).
//!
//! | outcome | then |
//! |---|---|
//! | 250 after the data | `done` marker, ack |
//! | 5xx, NULL_MX, NXDOMAIN, no addresses, SMTPUTF8 missing | DSN to the sender (never to `<>`), `done` marker, ack |
//! | 4xx, timeout, lost connection, TEMPORARY, every address unreachable | NAK with the next delay of the schedule; past the lifetime: DSN, ack |
//!
//! The `done` marker (metadata store, keyed by message id + recipient) makes
//! a redelivered item — an ack lost to a crash — a no-op instead of a
//! second copy (docs/architecture.md invariant 2).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use posthorn_backends::Backends;
use posthorn_dsn::Diagnostic;
use posthorn_proto::common::v1::{Envelope, Recipient};
use posthorn_proto::resolver::v1::resolver_service_client::ResolverServiceClient;
use posthorn_proto::resolver::v1::{LookupIpRequest, LookupMxRequest, ResultKind};
use tonic::transport::Channel;

pub use crate::settle::handle;

use crate::bounce::{self, Failure};
use crate::client::{self, Attempt, Job, RelayAuth, Timeouts};
use crate::retry::Schedule;
use crate::routes::Routes;
use posthorn_config::NextHop;

/// What a worker needs.
#[derive(Clone)]
pub struct Ctx {
    /// Stores and queues.
    pub backends: Backends,
    /// The resolver tier.
    pub resolver: ResolverServiceClient<Channel>,
    /// `server.hostname`: EHLO, Reporting-MTA.
    pub hostname: String,
    /// Port of the next hops.
    pub port: u16,
    /// SMTP timeouts.
    pub timeouts: Timeouts,
    /// Retry schedule.
    pub schedule: Schedule,
    /// The consumer's ack wait (the heartbeat runs at a third of it).
    pub ack_wait: Duration,
    /// Relay host, transports and their AUTH credentials.
    pub routes: std::sync::Arc<Routes>,
    /// `delivery.delay_warning_secs`: a deferred message older than this
    /// gets one delay warning per recipient; zero: never.
    pub delay_warning: Duration,
    /// Per-destination concurrency and suspension.
    pub destinations: std::sync::Arc<crate::destinations::Destinations>,
}

impl Ctx {
    /// The destination of `rcpt` for [`crate::destinations`]: the relay
    /// that carries its domain's mail, or the domain.
    pub fn destination(&self, rcpt: &str) -> String {
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        match self.routes.route(domain) {
            Some(hop) => hop.spec(),
            None => domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

/// How handling ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (or delivered before): ack. `hop_dsn`: the next hop
    /// offered DSN (NOTIFY was passed on; no relayed notice from us).
    Delivered {
        /// The next hop offered DSN.
        hop_dsn: bool,
    },
    /// Failed for good: notify, ack.
    Failed(Failure),
    /// Try again later.
    Deferred(String),
    /// Try again later: no next hop answered (refused, timed out, no
    /// greeting: `client::no_answer`), so the destination is suspended
    /// (`destinations`).
    Unreachable(String),
}

/// Marker name of a settled (message, recipient).
pub fn done_marker(env: &Envelope, rcpt: &str) -> String {
    format!(
        "delivery-done/{}",
        bounce::short_hash(&format!("{}\0{rcpt}", env.id))
    )
}

/// Whether a deferred item gets a delay warning now (RFC 3464 `Action:
/// delayed`): the warning is enabled (`warn_after` > 0), the sender is not
/// `<>`, the recipient's NOTIFY asks for DELAY (none given: yes, the
/// common MTA default; `NEVER`: no), and the message is at least
/// `warn_after` old (from `received_at`). Once only: the caller checks
/// the `delay-warned` marker.
pub fn should_warn(env: &Envelope, rcpt: &Recipient, warn_after: Duration, now: i64) -> bool {
    !warn_after.is_zero()
        && posthorn_dsn::delay_wanted(&env.mail_from, &rcpt.notify)
        && now.saturating_sub(env.received_at) >= warn_after.as_secs() as i64
}

/// Whether a delivered item gets a "relayed" notice (RFC 3461 §5.2.2):
/// the recipient's NOTIFY names SUCCESS, the sender is not `<>`, and the
/// next hop did not offer DSN (if it did, NOTIFY/ORCPT went on with the
/// message and the notice is the next hop's).
pub fn relayed_wanted(env: &Envelope, rcpt: &Recipient, hop_dsn: bool) -> bool {
    !hop_dsn
        && !env.mail_from.is_empty()
        && rcpt
            .notify
            .split(',')
            .any(|n| n.trim().eq_ignore_ascii_case("SUCCESS"))
}

/// The report of a deferral reason in a delay warning: the RFC 3463 status
/// (the first `4.x.x` in it, else `4.0.0`), the host of `host[addr]: ...`,
/// and the diagnostic: `smtp; <reply>` when the reason ends in the next
/// hop's 4xx reply (`host[addr]: RCPT: 451 4.3.0 ...`), else our own text.
pub(crate) fn delay_details(reason: &str) -> (String, Option<String>, Diagnostic) {
    let status = reason
        .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .find(|w| {
            let p: Vec<&str> = w.split('.').collect();
            p.len() == 3
                && p[0] == "4"
                && p[1..]
                    .iter()
                    .all(|x| !x.is_empty() && x.len() <= 3 && x.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or("4.0.0")
        .to_string();
    let host = reason
        .split_once("]: ")
        .and_then(|(h, _)| h.split_once('['))
        .map(|(h, _)| h.trim_end_matches('.'))
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .map(str::to_string);
    let reply = reason.split(": ").find(|p| {
        let b = p.as_bytes();
        b.len() > 4 && b[0] == b'4' && b[1..3].iter().all(u8::is_ascii_digit) && b[3] == b' '
    });
    let diagnostic = match (&host, reply) {
        (Some(_), Some(r)) => Diagnostic::Smtp(r.to_string()),
        _ => Diagnostic::Local(reason.to_string()),
    };
    (status, host, diagnostic)
}

/// Send a notification of `kind` once per (message, recipient): skipped
/// when its marker is set; the marker is set after the publish (the
/// deterministic id dedupes a repeated publish). Errors are logged only.
pub(crate) async fn notify_once(
    ctx: &Ctx,
    env: &Envelope,
    rcpt: &Recipient,
    f: &Failure,
    kind: bounce::Kind,
) {
    let marker = kind.marker(env, &rcpt.address);
    match ctx.backends.meta.has_marker(&marker).await {
        Ok(false) => {}
        Ok(true) => return,
        Err(e) => {
            tracing::warn!(error = %e, ?kind, "metadata store unavailable; notification skipped this time");
            return;
        }
    }
    if let Err(e) = bounce::publish(&ctx.backends, &ctx.hostname, env, rcpt, f, kind).await {
        tracing::warn!(error = %e, ?kind, "notification not queued");
        return;
    }
    if let Err(e) = ctx
        .backends
        .meta
        .set_marker(&marker, marker_ttl(&ctx.schedule))
        .await
    {
        tracing::warn!(error = %e, ?kind, "notification marker not recorded");
    }
}

/// How long a `done` marker is kept: past any redelivery of the item.
pub(crate) fn marker_ttl(s: &Schedule) -> Duration {
    s.lifetime + Duration::from_secs(7 * 86_400)
}

/// Handle one delivery of the outbound queue.
/// header section.
fn needs_smtputf8(env: &Envelope, rcpt: &str, message: &[u8]) -> bool {
    !env.mail_from.is_ascii()
        || !rcpt.is_ascii()
        || !posthorn_dsn::header_section(message).is_ascii()
}

/// The next hops of `domain`, in order: (host name, its addresses).
async fn next_hops(ctx: &Ctx, domain: &str) -> Result<Vec<(String, Vec<IpAddr>)>, Outcome> {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return match ip.parse::<IpAddr>() {
            Ok(ip) => Ok(vec![(domain.to_string(), vec![ip])]),
            Err(_) => Err(permanent(
                "5.1.2",
                format!("bad address literal {domain}"),
                None,
            )),
        };
    }
    let mut resolver = ctx.resolver.clone();
    let answer = resolver
        .lookup_mx(LookupMxRequest {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            resolve_addresses: true,
        })
        .await;
    let resp = match answer {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            return Err(permanent(
                "5.1.2",
                format!("bad destination domain {domain}: {}", s.message()),
                None,
            ));
        }
        Err(s) => return Err(Outcome::Deferred(format!("resolver: {}", s.message()))),
    };
    let a = resp.answer.unwrap_or_default();
    match ResultKind::try_from(a.result).unwrap_or(ResultKind::Unspecified) {
        ResultKind::Ok => {}
        ResultKind::NullMx => {
            return Err(permanent(
                "5.1.10",
                format!("556 5.1.10 {domain} accepts no mail (null MX, RFC 7505)"),
                None,
            ));
        }
        ResultKind::Nxdomain => {
            return Err(permanent(
                "5.1.2",
                format!("host or domain name not found: {domain} (NXDOMAIN)"),
                None,
            ));
        }
        ResultKind::NoRecords => {
            return Err(permanent(
                "5.1.2",
                format!("{domain} has no MX and no address records"),
                None,
            ));
        }
        ResultKind::Temporary | ResultKind::Unspecified => {
            return Err(Outcome::Deferred(format!(
                "DNS lookup of {domain} failed temporarily: {}",
                a.detail
            )));
        }
    }
    let mut hops = Vec::new();
    let mut temporary = false;
    for h in resp.hosts {
        let addrs: Vec<IpAddr> = h.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        if addrs.is_empty() {
            temporary |= h.address_result == ResultKind::Temporary as i32;
            tracing::info!(host = %h.exchange, result = h.address_result, "MX host without addresses; skipped");
            continue;
        }
        hops.push((h.exchange, addrs));
    }
    if hops.is_empty() {
        return Err(if temporary {
            Outcome::Deferred(format!(
                "addresses of the MX hosts of {domain} not found (temporary)"
            ))
        } else {
            permanent(
                "5.4.4",
                format!("no MX host of {domain} has an address"),
                None,
            )
        });
    }
    Ok(hops)
}

/// The addresses of a configured next hop (`relayhost`, `transports`).
/// Every failure to find them defers: a relay that is not in the DNS is a
/// configuration error of ours, not the recipient's (docs/delivery.md).
async fn relay_hops(ctx: &Ctx, hop: &NextHop) -> Result<Vec<(String, Vec<IpAddr>)>, Outcome> {
    let spec = hop.spec();
    if let Ok(ip) = hop.host.parse::<IpAddr>() {
        return Ok(vec![(hop.host.clone(), vec![ip])]);
    }
    let defer = |why: String| {
        tracing::error!(relay = %spec, %why, "relay host not found; mail to it is deferred");
        Outcome::Deferred(format!("relay {spec}: {why}"))
    };
    if hop.mx {
        return match next_hops(ctx, &hop.host).await {
            Ok(h) => Ok(h),
            Err(Outcome::Failed(f)) => Err(defer(match f.diagnostic {
                Diagnostic::Local(t) | Diagnostic::Smtp(t) => t,
            })),
            Err(o) => Err(o),
        };
    }
    let mut resolver = ctx.resolver.clone();
    let resp = match resolver
        .lookup_ip(LookupIpRequest {
            host: hop.host.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(defer(format!("resolver: {}", s.message()))),
    };
    let a = resp.answer.unwrap_or_default();
    let addrs: Vec<IpAddr> = resp
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    if addrs.is_empty() {
        let kind = ResultKind::try_from(a.result).unwrap_or(ResultKind::Unspecified);
        return Err(defer(format!(
            "no address for {} ({kind:?}{})",
            hop.host,
            if a.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", a.detail)
            }
        )));
    }
    Ok(vec![(hop.host.clone(), addrs)])
}

fn permanent(status: &str, text: String, host: Option<String>) -> Outcome {
    Outcome::Failed(Failure {
        status: status.into(),
        diagnostic: Diagnostic::Local(text),
        remote_mta: host,
    })
}

/// Try the next hops of the recipient's domain, in order.
pub async fn attempt_all(ctx: &Ctx, env: &Envelope, rcpt: &Recipient) -> Outcome {
    let Some((_, domain)) = rcpt.address.rsplit_once('@') else {
        return permanent(
            "5.1.3",
            format!("bad recipient address {}", rcpt.address),
            None,
        );
    };
    let message = match ctx.backends.blobs.get(&env.blob_key).await {
        Ok(b) => b,
        Err(e) if e.is_transient() => return Outcome::Deferred(format!("blob store: {e}")),
        Err(e) => {
            tracing::error!(blob = %env.blob_key, error = %e, "message body missing");
            return permanent("5.3.0", format!("the message body is lost ({e})"), None);
        }
    };
    let route = ctx.routes.route(domain);
    let (hops, port, auth) = match route {
        Some(hop) => match relay_hops(ctx, hop).await {
            Ok(h) => (
                h,
                hop.port.unwrap_or(ctx.port),
                ctx.routes.credentials(hop).map(|c| RelayAuth {
                    credentials: c,
                    plaintext_ok: ctx.routes.auth_plaintext,
                }),
            ),
            Err(o) => return o,
        },
        None => match next_hops(ctx, domain).await {
            Ok(h) => (h, ctx.port, None),
            Err(o) => return o,
        },
    };
    let job = Job {
        helo: &ctx.hostname,
        mail_from: &env.mail_from,
        rcpt: &rcpt.address,
        notify: &rcpt.notify,
        orcpt: &rcpt.orcpt,
        ret: &env.dsn_ret,
        envid: &env.dsn_envid,
        body_type: &env.body_type,
        needs_smtputf8: needs_smtputf8(env, &rcpt.address, &message),
        message: &message,
    };
    let mut last = String::from("no next hop tried");
    // Whether some host answered (see `client::no_answer`).
    let mut answered = false;
    for (host, addrs) in hops {
        for ip in addrs {
            let addr = SocketAddr::new(ip, port);
            match client::attempt(addr, &host, &job, &ctx.timeouts, auth).await {
                Attempt::Unreachable(why) => {
                    tracing::info!(%host, %addr, %why, "next hop unreachable; trying the next");
                    answered |= !client::no_answer(&why);
                    last = why;
                }
                Attempt::Delivered(reply, hop_dsn) => {
                    tracing::info!(%host, %addr, %reply, hop_dsn, "delivered");
                    return Outcome::Delivered { hop_dsn };
                }
                Attempt::Rejected(reply) => {
                    return Outcome::Failed(Failure {
                        status: posthorn_dsn::status_of(reply.code, reply.esc),
                        diagnostic: Diagnostic::Smtp(reply.to_string()),
                        remote_mta: Some(host.trim_end_matches('.').to_string()),
                    });
                }
                Attempt::Refused(status, text) => {
                    return permanent(status, text, Some(host.trim_end_matches('.').to_string()));
                }
                Attempt::Deferred(why) => {
                    return Outcome::Deferred(format!("{host}[{addr}]: {why}"));
                }
            }
        }
    }
    if answered {
        Outcome::Deferred(last)
    } else {
        Outcome::Unreachable(last)
    }
}

#[cfg(test)]
mod tests;
