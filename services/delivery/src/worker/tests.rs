//! Unit tests of the worker's decisions.

use super::*;

#[test]
fn markers_and_smtputf8() {
    let env = Envelope {
        id: "Q1".into(),
        mail_from: "a@b".into(),
        ..Default::default()
    };
    let m = done_marker(&env, "bob@remote.test");
    assert!(m.starts_with("delivery-done/"));
    assert_eq!(m, done_marker(&env, "bob@remote.test"));
    assert_ne!(m, done_marker(&env, "carol@remote.test"));
    assert!(!m.contains(char::is_whitespace));
    assert!(!needs_smtputf8(&env, "b@c", b"Subject: x\r\n\r\n\xc3\xa9"));
    assert!(needs_smtputf8(&env, "b@c", b"Subject: \xc3\xa9\r\n\r\nx"));
    assert!(needs_smtputf8(&env, "j\u{f6}rg@c", b"Subject: x\r\n\r\n"));
}

fn rcpt(notify: &str) -> Recipient {
    Recipient {
        address: "bob@remote.test".into(),
        notify: notify.into(),
        ..Default::default()
    }
}

#[test]
fn delay_warning_decision() {
    let env = Envelope {
        id: "Q1".into(),
        mail_from: "a@b".into(),
        received_at: 1_000,
        ..Default::default()
    };
    let h = Duration::from_secs(3600);
    // Old enough, no NOTIFY: the default is to warn.
    assert!(should_warn(&env, &rcpt(""), h, 4_600));
    assert!(!should_warn(&env, &rcpt(""), h, 4_599));
    assert!(should_warn(&env, &rcpt("DELAY,FAILURE"), h, 5_000));
    assert!(should_warn(&env, &rcpt("delay"), h, 5_000));
    assert!(!should_warn(&env, &rcpt("FAILURE"), h, 5_000));
    assert!(!should_warn(&env, &rcpt("SUCCESS,FAILURE"), h, 5_000));
    assert!(!should_warn(&env, &rcpt("NEVER"), h, 5_000));
    // Disabled.
    assert!(!should_warn(&env, &rcpt(""), Duration::ZERO, 1_000_000));
    // Never to <>.
    let null = Envelope {
        mail_from: String::new(),
        ..env.clone()
    };
    assert!(!should_warn(&null, &rcpt(""), h, 1_000_000));
    // Distinct, deterministic ids and markers per kind and recipient.
    let d = bounce::Kind::Delayed { until: 0 };
    assert_eq!(d.id(&env, "bob@x"), d.id(&env, "bob@x"));
    assert_ne!(d.id(&env, "bob@x"), d.id(&env, "carol@x"));
    assert_ne!(d.id(&env, "bob@x"), bounce::Kind::Failed.id(&env, "bob@x"));
    assert_ne!(d.id(&env, "bob@x"), bounce::Kind::Relayed.id(&env, "bob@x"));
    assert!(d.marker(&env, "bob@x").starts_with("delay-warned/"));
    assert_ne!(
        d.marker(&env, "bob@x"),
        bounce::Kind::Relayed.marker(&env, "bob@x")
    );
    assert_ne!(d.marker(&env, "bob@x"), done_marker(&env, "bob@x"));
}

#[test]
fn relayed_decision() {
    let env = Envelope {
        id: "Q1".into(),
        mail_from: "a@b".into(),
        ..Default::default()
    };
    assert!(relayed_wanted(&env, &rcpt("SUCCESS"), false));
    assert!(relayed_wanted(&env, &rcpt("FAILURE, success"), false));
    // The next hop offered DSN: NOTIFY went on, no notice from us.
    assert!(!relayed_wanted(&env, &rcpt("SUCCESS"), true));
    // Not asked for (no NOTIFY means FAILURE only, RFC 3461 §4.1).
    assert!(!relayed_wanted(&env, &rcpt(""), false));
    assert!(!relayed_wanted(&env, &rcpt("FAILURE,DELAY"), false));
    assert!(!relayed_wanted(&env, &rcpt("NEVER"), false));
    let null = Envelope {
        mail_from: String::new(),
        ..env
    };
    assert!(!relayed_wanted(&null, &rcpt("SUCCESS"), false));
}

#[test]
fn delay_details_from_reasons() {
    assert_eq!(
        delay_details("mx1.remote.test.[127.0.0.5:25]: RCPT: 451 4.3.0 try later"),
        (
            "4.3.0".to_string(),
            Some("mx1.remote.test".to_string()),
            Diagnostic::Smtp("451 4.3.0 try later".to_string())
        )
    );
    assert_eq!(
        delay_details("mx1.remote.test.[127.0.0.5:25]: MAIL: timeout"),
        (
            "4.0.0".to_string(),
            Some("mx1.remote.test".to_string()),
            Diagnostic::Local("mx1.remote.test.[127.0.0.5:25]: MAIL: timeout".to_string())
        )
    );
    assert_eq!(
        delay_details("resolver: unavailable"),
        (
            "4.0.0".to_string(),
            None,
            Diagnostic::Local("resolver: unavailable".to_string())
        )
    );
    assert_eq!(
        delay_details("relay [r.test]:587: no address for r.test (Nxdomain)"),
        (
            "4.0.0".to_string(),
            None,
            Diagnostic::Local("relay [r.test]:587: no address for r.test (Nxdomain)".to_string())
        )
    );
}
