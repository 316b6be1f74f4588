//! Remote delivery end to end through the `posthorn` binary: authenticated
//! submission to a remote recipient, the resolver asking a throwaway DNS
//! server (dnsmasq), delivery talking SMTP to scripted aiosmtpd peers on
//! 127.0.0.x (see docs/delivery.md).

mod common;

use std::net::SocketAddr;

use common::remote::{submit, wait_sink};
use common::*;
use posthorn_test_support::{DnsServer, DnsZone, SmtpSink, free_port};

/// The DNS of the tests: every domain is under `.test`, unknown names are
/// NXDOMAIN.
fn zone() -> DnsZone {
    DnsZone::new()
        .local("test")
        .mx("remote.test", 10, "mx.remote.test")
        .a("mx.remote.test", "127.0.0.2")
        // Two MX hosts, the preferred one refusing connections.
        .mx("second.test", 10, "mx1.second.test")
        .a("mx1.second.test", "127.0.0.3")
        .mx("second.test", 20, "mx2.second.test")
        .a("mx2.second.test", "127.0.0.2")
        .mx("retry.test", 10, "mx.retry.test")
        .a("mx.retry.test", "127.0.0.4")
        .mx("reject.test", 10, "mx.reject.test")
        .a("mx.reject.test", "127.0.0.5")
        .null_mx("nullmx.test")
}

/// A system whose delivery finds the peers through `dns` on `port`, with
/// retries after 1–2 s.
fn system(backend: Backend, dns: &DnsServer, port: u16) -> System {
    let addr: SocketAddr = dns.addr();
    let sys = System::start_extra(
        backend,
        Extra {
            resolver: format!("nameservers = [\"{addr}\"]"),
            delivery: format!(
                "remote_port = {port}\nretry_min_secs = 1\nretry_max_secs = 2\nconnect_timeout_secs = 5"
            ),
            ..Extra::default()
        },
    );
    sys.standard_directory();
    sys
}

/// `got` is `sent` with trace header fields (`Received:`) added in front.
fn assert_same_but_trace(got: &[u8], sent: &[u8]) {
    assert!(
        got.ends_with(sent),
        "the peer did not get the message byte for byte:\n{}",
        String::from_utf8_lossy(got)
    );
    let prefix = String::from_utf8_lossy(&got[..got.len() - sent.len()]).to_string();
    assert!(!prefix.is_empty(), "no trace header added");
    for line in prefix.split_terminator("\r\n") {
        assert!(
            line.starts_with("Received:") || line.starts_with([' ', '\t']),
            "unexpected line {line:?} added in front of the message"
        );
    }
}

/// A DSN in alice's INBOX (the `n`-th message), as text.
fn wait_dsn(sys: &System, n: usize) -> String {
    let m = sys.wait_messages("alice@example.test", n, WAIT);
    String::from_utf8_lossy(&sys.fetch("alice@example.test", m[n - 1].0)).to_string()
}

#[test]
fn delivers_byte_exact_and_falls_back_to_the_second_mx_embedded() {
    delivers_byte_exact_and_falls_back_to_the_second_mx(Backend::Embedded);
}

#[test]
fn delivers_byte_exact_and_falls_back_to_the_second_mx_cluster() {
    delivers_byte_exact_and_falls_back_to_the_second_mx(Backend::Cluster);
}

fn delivers_byte_exact_and_falls_back_to_the_second_mx(backend: Backend) {
    let dns = DnsServer::start(&zone());
    let port = free_port();
    let sink = SmtpSink::start_tls("127.0.0.2", port, "");
    let sys = system(backend, &dns, port);

    let msg = "From: Alice <alice@example.test>\r\n\
               To: Bob <bob@remote.test>\r\n\
               Subject: to a remote peer\r\n\
               Message-ID: <remote-1@example.test>\r\n\
               MIME-Version: 1.0\r\n\
               Content-Type: text/plain; charset=utf-8\r\n\
               Content-Transfer-Encoding: 8bit\r\n\
               \r\n\
               Grüße aus Posthorn.\r\n\
               .a line that starts with a dot\r\n\
               ..and two\r\n\
               .\r\n\
               last line\r\n"
        .as_bytes();
    submit(&sys, "bob@remote.test", msg);
    let got = wait_sink(&sys, &sink, 1);
    assert_same_but_trace(&got[0], msg);
    let env = sink.envelope(1);
    assert!(
        env.contains("\"mail_from\": \"alice@example.test\""),
        "{env}"
    );
    assert!(env.contains("\"rcpt_tos\": [\"bob@remote.test\"]"), "{env}");
    // The peer offers SIZE and 8BITMIME: both are used.
    assert!(env.contains(&format!("\"SIZE={}\"", got[0].len())), "{env}");
    assert!(env.contains("\"BODY=8BITMIME\""), "{env}");
    // The peer offers STARTTLS: the message went over TLS.
    assert!(env.contains("\"tls\": true"), "{env}");

    // mx1.second.test (127.0.0.3) refuses connections: delivered via mx2.
    let msg2 = b"From: alice@example.test\r\nSubject: via the second MX\r\n\r\nhello\r\n";
    submit(&sys, "carol@second.test", msg2);
    let got = wait_sink(&sys, &sink, 2);
    assert_same_but_trace(&got[1], msg2);
    assert!(sink.envelope(2).contains("carol@second.test"));
    // Nothing bounced.
    assert!(sys.messages("alice@example.test").is_empty());
}

#[test]
fn temporary_failures_are_retried_and_delivered_once_embedded() {
    temporary_failures_are_retried_and_delivered_once(Backend::Embedded);
}

#[test]
fn temporary_failures_are_retried_and_delivered_once_cluster() {
    temporary_failures_are_retried_and_delivered_once(Backend::Cluster);
}

fn temporary_failures_are_retried_and_delivered_once(backend: Backend) {
    let dns = DnsServer::start(&zone());
    let port = free_port();
    let sink = SmtpSink::start(
        "127.0.0.4",
        port,
        r#"{"rcpt": ["451 4.3.0 busy, try later", "451 4.3.0 busy, try later", "451 4.3.0 busy, try later"]}"#,
    );
    let sys = system(backend, &dns, port);
    let msg = b"From: alice@example.test\r\nSubject: first\r\n\r\npatience\r\n";
    submit(&sys, "dave@retry.test", msg);
    let got = wait_sink(&sys, &sink, 1);
    assert_same_but_trace(&got[0], msg);
    let events = sink.events();
    let deferred = events.matches("\"reply\": \"451 4.3.0 busy").count();
    assert_eq!(deferred, 3, "{events}");
    // A second message through the same peer, after the first: when it has
    // arrived, a duplicate of the first would have too.
    let msg2 = b"From: alice@example.test\r\nSubject: second\r\n\r\nmarker\r\n";
    submit(&sys, "dave@retry.test", msg2);
    let got = wait_sink(&sys, &sink, 2);
    assert_eq!(got.len(), 2, "delivered more than once");
    assert_same_but_trace(&got[1], msg2);
    assert!(
        sys.messages("alice@example.test").is_empty(),
        "no DSN for a retried message"
    );
}

#[test]
fn permanent_failures_bounce_to_the_sender_embedded() {
    permanent_failures_bounce_to_the_sender(Backend::Embedded);
}

#[test]
fn permanent_failures_bounce_to_the_sender_cluster() {
    permanent_failures_bounce_to_the_sender(Backend::Cluster);
}

fn permanent_failures_bounce_to_the_sender(backend: Backend) {
    let dns = DnsServer::start(&zone());
    let port = free_port();
    let _sink = SmtpSink::start(
        "127.0.0.5",
        port,
        r#"{"rcpt": ["550 5.1.1 no such user here"]}"#,
    );
    let sys = system(backend, &dns, port);

    submit(
        &sys,
        "erin@reject.test",
        b"From: alice@example.test\r\nSubject: rejected\r\n\r\nsecret body\r\n",
    );
    let dsn = wait_dsn(&sys, 1);
    for want in [
        "From: Mail Delivery System <MAILER-DAEMON@",
        "Return-Path: <>",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Final-Recipient: rfc822; erin@reject.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.reject.test",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user here",
        "Subject: rejected",
    ] {
        assert!(dsn.contains(want), "missing {want:?} in\n{dsn}");
    }
    assert!(!dsn.contains("secret body"), "RET=HDRS by default\n{dsn}");

    // Null MX: bounced without any connection.
    submit(
        &sys,
        "frank@nullmx.test",
        b"From: alice@example.test\r\nSubject: null\r\n\r\nx\r\n",
    );
    let dsn = wait_dsn(&sys, 2);
    assert!(
        dsn.contains("Final-Recipient: rfc822; frank@nullmx.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(dsn.contains("null MX"), "{dsn}");

    // NXDOMAIN: bounced at once.
    submit(
        &sys,
        "gina@missing.test",
        b"From: alice@example.test\r\nSubject: nx\r\n\r\nx\r\n",
    );
    let dsn = wait_dsn(&sys, 3);
    assert!(
        dsn.contains("Final-Recipient: rfc822; gina@missing.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.2"), "{dsn}");
    assert!(dsn.contains("NXDOMAIN"), "{dsn}");
}

/// A peer that answers 451 to every RCPT: with `delay_warning_secs = 1`
/// the sender gets exactly one "delayed" DSN, however often the item is
/// deferred afterwards.
#[test]
fn one_delay_warning_per_recipient_embedded() {
    one_delay_warning_per_recipient(Backend::Embedded);
}

#[test]
fn one_delay_warning_per_recipient_cluster() {
    one_delay_warning_per_recipient(Backend::Cluster);
}

fn one_delay_warning_per_recipient(backend: Backend) {
    let dns = DnsServer::start(&zone());
    let port = free_port();
    let busy = vec!["\"451 4.3.0 busy, try later\""; 500].join(", ");
    let sink = SmtpSink::start("127.0.0.4", port, &format!("{{\"rcpt\": [{busy}]}}"));
    let addr: SocketAddr = dns.addr();
    let sys = System::start_extra(
        backend,
        Extra {
            resolver: format!("nameservers = [\"{addr}\"]"),
            delivery: format!(
                "remote_port = {port}\nretry_min_secs = 1\nretry_max_secs = 1\nconnect_timeout_secs = 5\n\
                 delay_warning_secs = 1\nmax_queue_lifetime_secs = 86400"
            ),
            ..Extra::default()
        },
    );
    sys.standard_directory();
    let msg = b"From: alice@example.test\r\nSubject: slow\r\n\r\npatience\r\n";
    submit(&sys, "dave@retry.test", msg);
    let dsn = wait_dsn(&sys, 1);
    for want in [
        "Subject: Delayed Mail",
        "Final-Recipient: rfc822; dave@retry.test",
        "Action: delayed",
        "Status: 4.3.0",
        "Diagnostic-Code: smtp; 451 4.3.0 busy",
        "Remote-MTA: dns; mx.retry.test",
        "Will-Retry-Until: ",
    ] {
        assert!(dsn.contains(want), "missing {want:?} in\n{dsn}");
    }
    // Several more deferrals after the warning...
    let before = sink.events().matches("\"reply\": \"451 4.3.0 busy").count();
    sys.wait_for("three more deferrals", WAIT, || {
        (sink.events().matches("\"reply\": \"451 4.3.0 busy").count() >= before + 3).then_some(())
    });
    // ...then a marker message: a second warning would have come before it.
    submit(
        &sys,
        "alice@example.test",
        b"From: alice@example.test\r\nSubject: marker\r\n\r\nmarker\r\n",
    );
    let m = sys.wait_messages("alice@example.test", 2, WAIT);
    assert_eq!(m.len(), 2, "a second delay warning arrived");
    let last = String::from_utf8_lossy(&sys.fetch("alice@example.test", m[1].0)).to_string();
    assert!(last.contains("Subject: marker"), "{last}");
    assert!(sink.messages().is_empty());
}

#[test]
fn relayed_notice_for_a_hop_without_dsn_embedded() {
    relayed_notice_for_a_hop_without_dsn(Backend::Embedded);
}

#[test]
fn relayed_notice_for_a_hop_without_dsn_cluster() {
    relayed_notice_for_a_hop_without_dsn(Backend::Cluster);
}

/// A recipient with `NOTIFY=SUCCESS` delivered to a next hop that does not
/// offer DSN (aiosmtpd offers none): the sender gets one `Action: relayed`
/// notice (RFC 3461 §5.2.2), and the hop is sent no NOTIFY.
fn relayed_notice_for_a_hop_without_dsn(backend: Backend) {
    let port = free_port();
    let dns = DnsServer::start(&zone());
    let sink = SmtpSink::start("127.0.0.2", port, "");
    let sys = system(backend, &dns, port);
    python_or(
        r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=60)
s.starttls(context=ssl._create_unverified_context())
s.login("alice@example.test", "alice-pw")
code, reply = s.mail("alice@example.test", ["RET=HDRS"])
assert code == 250, (code, reply)
code, reply = s.rcpt("bob@remote.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;bob@remote.test"])
assert code == 250, (code, reply)
code, reply = s.data(b"From: alice@example.test\r\nSubject: tell me\r\n\r\nbody\r\n")
assert code == 250, (code, reply)
s.quit()
"#,
        &[&sys.ports.submission.to_string()],
        || sys.logs(),
    );
    wait_sink(&sys, &sink, 1);
    let dsn = wait_dsn(&sys, 1);
    for want in [
        "Action: relayed",
        "Status: 2.0.0",
        "Final-Recipient: rfc822; bob@remote.test",
        // The ORCPT as the client wrote it (RFC 3464 §2.3.1).
        "Original-Recipient: rfc822;bob@remote.test",
        "does not offer DSN",
        "Content-Description: Relayed message",
    ] {
        assert!(dsn.contains(want), "{want:?} in the notice:\n{dsn}");
    }
    let env = sink.envelope(1);
    assert!(
        !env.contains("NOTIFY"),
        "no NOTIFY to a hop without DSN: {env}"
    );
    assert_eq!(sys.messages("alice@example.test").len(), 1, "one notice");
}
