//! Remote delivery to an independent SMTP implementation: Debian's Postfix
//! (`PostfixPeer`, a throwaway instance in its own directories) receives
//! what the `posthorn` binary's delivery tier sends it, found through the
//! MX of a throwaway DNS server (dnsmasq). See docs/delivery.md, "Tests".

mod common;

use std::net::SocketAddr;

use common::remote::submit;
use common::*;
use posthorn_test_support::postfix::PostfixPeer;
use posthorn_test_support::{DnsServer, DnsZone, free_port};

#[test]
fn postfix_receives_the_message_byte_for_byte_embedded() {
    let zone = DnsZone::new()
        .local("test")
        .mx("postfix.test", 10, "mx.postfix.test")
        .a("mx.postfix.test", "127.0.0.2");
    let dns = DnsServer::start(&zone);
    let port = free_port();
    let postfix = PostfixPeer::start("127.0.0.2", port, "postfix.test");
    let addr: SocketAddr = dns.addr();
    let sys = System::start_extra(
        Backend::Embedded,
        Extra {
            resolver: format!("nameservers = [\"{addr}\"]"),
            delivery: format!("remote_port = {port}\nconnect_timeout_secs = 5"),
            ..Extra::default()
        },
    );
    sys.standard_directory();

    let msg = "From: Alice <alice@example.test>\r\n\
               To: Bob <bob@postfix.test>\r\n\
               Subject: to Postfix\r\n\
               Date: Fri, 04 Dec 2026 10:00:00 +0000\r\n\
               Message-ID: <postfix-1@example.test>\r\n\
               MIME-Version: 1.0\r\n\
               Content-Type: text/plain; charset=utf-8\r\n\
               Content-Transfer-Encoding: 8bit\r\n\
               \r\n\
               Grüße an Postfix.\r\n\
               .a line that starts with a dot\r\n\
               ..and two\r\n\
               .\r\n\
               last line\r\n"
        .as_bytes();
    submit(&sys, "bob@postfix.test", msg);
    let got = postfix.wait_messages("bob", 1, WAIT, || sys.logs());
    assert_eq!(got.len(), 1, "delivered more than once:\n{}", postfix.log());
    let got = String::from_utf8(got[0].clone()).expect("stored message is UTF-8");

    // virtual(8) stores lines ending in LF: the submitted message, with
    // its CRLFs as LFs, must end the stored one unchanged (header section,
    // 8-bit body, dot-stuffed lines undone).
    let sent = String::from_utf8(msg.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    assert!(
        got.ends_with(&sent),
        "Postfix did not get the message byte for byte:\n{got}"
    );
    // Only trace fields were added in front: Postfix's Return-Path,
    // Delivered-To, X-Original-To and Received, and Posthorn's Received.
    let prefix = &got[..got.len() - sent.len()];
    let mut received = Vec::new();
    for line in prefix.split_terminator('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some(r) = received.last_mut() {
                *r = format!("{r}\n{line}");
            }
            continue;
        }
        let name = line.split(':').next().unwrap_or("");
        assert!(
            ["Return-Path", "Delivered-To", "X-Original-To", "Received"].contains(&name),
            "unexpected line {line:?} added in front of the message:\n{got}"
        );
        if name == "Received" {
            received.push(line.to_string());
        }
    }
    assert_eq!(received.len(), 2, "Postfix's and Posthorn's:\n{got}");
    // Postfix's own (the first) names the client by its EHLO name (the
    // default `server.hostname`) and its address.
    assert!(
        received[0].starts_with("Received: from localhost (")
            && received[0].contains("[127.0.0.1]"),
        "Postfix's Received: {}",
        received[0]
    );
    assert!(
        received[0].contains("by mx.postfix.test (Postfix) with ESMTP"),
        "{}",
        received[0]
    );
    assert!(received[1].contains("(Posthorn)"), "{}", received[1]);
    // The envelope: MAIL FROM alice, RCPT TO bob.
    assert!(
        got.starts_with("Return-Path: <alice@example.test>\n"),
        "{got}"
    );
    assert!(got.contains("\nDelivered-To: bob@postfix.test\n"), "{got}");
    let log = postfix.log();
    assert!(log.contains("from=<alice@example.test>"), "{log}");
    assert!(
        log.contains("to=<bob@postfix.test>") && log.contains("status=sent"),
        "{log}"
    );
    // Nothing bounced.
    assert!(sys.messages("alice@example.test").is_empty());
}
