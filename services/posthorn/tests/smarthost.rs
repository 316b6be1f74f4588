//! Relay host ("smarthost") and per-domain transports end to end through
//! the `posthorn` binary: `delivery.relayhost`, `delivery.transports` and
//! AUTH with `delivery.relay_auth_file`, against scripted aiosmtpd peers
//! (docs/delivery.md, "Relay host and transports").

mod common;

use std::net::SocketAddr;

use common::remote::{submit, wait_sink};
use common::*;
use posthorn_test_support::{DnsServer, DnsZone, SmtpSink, free_port};

/// Every line the system logged (`System::logs` is a tail).
fn full_log(sys: &System) -> String {
    sys.procs.iter().map(|(_, p)| p.log_text()).collect()
}

#[test]
fn relayhost_with_auth_and_transports_embedded() {
    relayhost_with_auth_and_transports(Backend::Embedded);
}

#[test]
fn relayhost_with_auth_and_transports_cluster() {
    relayhost_with_auth_and_transports(Backend::Cluster);
}

fn relayhost_with_auth_and_transports(backend: Backend) {
    // Only the relays are in the DNS: the recipient domains are not.
    let dns = DnsServer::start(
        &DnsZone::new()
            .local("test")
            // relayhost = "[relay.test]:port": its A record, no MX lookup.
            .a("relay.test", "127.0.0.6")
            // A transport without brackets: the MX of relay2.test.
            .mx("relay2.test", 10, "mx.relay2.test")
            .a("mx.relay2.test", "127.0.0.7"),
    );
    let (p1, p2, p3, p4) = (free_port(), free_port(), free_port(), free_port());
    // The relay host: STARTTLS, then AUTH required.
    let relay = SmtpSink::start_tls(
        "127.0.0.6",
        p1,
        r#"{"auth": ["relay-user@example.test", "relay pw with spaces"]}"#,
    );
    // A second relay for one domain, without AUTH.
    let special = SmtpSink::start("127.0.0.7", p2, "");
    // A relay that does not know our password.
    let wrong = SmtpSink::start_tls("127.0.0.8", p3, r#"{"auth": ["other", "secret"]}"#);
    // A relay with AUTH but no STARTTLS: the password must not go in clear.
    let plain = SmtpSink::start("127.0.0.9", p4, r#"{"auth": ["plain-user", "pw"]}"#);

    let secrets = tempfile::tempdir().unwrap();
    let auth_file = secrets.path().join("relay_auth");
    std::fs::write(
        &auth_file,
        format!(
            "# host username password\n\
             [relay.test]:{p1} relay-user@example.test relay pw with spaces\n\
             [127.0.0.8]:{p3} me not-the-password\n\
             127.0.0.9 plain-user pw\n"
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let addr: SocketAddr = dns.addr();
    let sys = System::start_extra(
        backend,
        Extra {
            resolver: format!("nameservers = [\"{addr}\"]"),
            delivery: format!(
                "relayhost = \"[relay.test]:{p1}\"\n\
                 relay_auth_file = \"{}\"\n\
                 transports = {{ \"special.test\" = \"relay2.test:{p2}\", \
                 \"wrongpw.test\" = \"[127.0.0.8]:{p3}\", \".plain.test\" = \"[127.0.0.9]:{p4}\" }}\n\
                 retry_min_secs = 1\nretry_max_secs = 2\nconnect_timeout_secs = 5",
                auth_file.display()
            ),
            ..Extra::default()
        },
    );
    sys.standard_directory();

    // A domain nobody knows goes to the relay host, authenticated over TLS.
    let msg = b"From: alice@example.test\r\nSubject: via the relay\r\n\r\nhello relay\r\n";
    submit(&sys, "bob@any.remote", msg);
    let got = wait_sink(&sys, &relay, 1);
    assert!(
        got[0].ends_with(msg),
        "{}",
        String::from_utf8_lossy(&got[0])
    );
    let env = relay.envelope(1);
    assert!(env.contains("\"rcpt_tos\": [\"bob@any.remote\"]"), "{env}");
    assert!(env.contains("\"tls\": true"), "{env}");
    assert!(
        env.contains("\"auth\": \"relay-user@example.test\""),
        "{env}"
    );

    // special.test has a transport of its own: the second relay (via its
    // MX), not the relay host.
    let msg2 = b"From: alice@example.test\r\nSubject: via transport\r\n\r\nspecial\r\n";
    submit(&sys, "carol@special.test", msg2);
    let got = wait_sink(&sys, &special, 1);
    assert!(got[0].ends_with(msg2));
    assert!(special.envelope(1).contains("carol@special.test"));
    assert!(special.envelope(1).contains("\"auth\": null"));

    // A rejected password (535) defers — retried, never bounced.
    submit(
        &sys,
        "dave@wrongpw.test",
        b"From: alice@example.test\r\nSubject: wrong pw\r\n\r\nx\r\n",
    );
    sys.wait_for("two rejected AUTH tries at 127.0.0.8", WAIT, || {
        (wrong.events().matches("\"success\": false").count() >= 2).then_some(())
    });
    assert!(wrong.messages().is_empty());

    // No STARTTLS at a relay we have a password for: deferred, the
    // password never sent.
    submit(
        &sys,
        "erin@x.plain.test",
        b"From: alice@example.test\r\nSubject: plain\r\n\r\nx\r\n",
    );
    sys.wait_for("two refusals to AUTH in clear", WAIT, || {
        (sys.logs()
            .matches("not sending the AUTH password in clear")
            .count()
            >= 2)
            .then_some(())
    });
    assert!(!plain.events().contains("auth"), "{}", plain.events());
    assert!(plain.messages().is_empty());

    // Everything else still went where it should, once; nothing bounced.
    assert_eq!(relay.messages().len(), 1);
    assert_eq!(special.messages().len(), 1);
    assert!(
        sys.messages("alice@example.test").is_empty(),
        "a deferral bounced"
    );
    let logs = full_log(&sys);
    assert!(
        logs.contains("rejected our AUTH credentials"),
        "the rejected password is not logged loudly"
    );
    assert!(!logs.contains("not-the-password"), "a password in the logs");
}
