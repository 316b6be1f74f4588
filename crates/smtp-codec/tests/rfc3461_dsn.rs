//! RFC 3461 (DSN) and RFC 4954 (AUTH=) parameter vectors, with xtext (RFC 3461 §4).

use posthorn_smtp_codec::{
    AuthParam, ForwardPath, MailParams, Notify, Orcpt, ParseError, RcptParams, Request, Ret,
    parse_command, xtext,
};

fn mail_params(line: &str) -> Result<MailParams, ParseError> {
    parse_command(line.as_bytes()).map(|r| match r {
        Request::Mail { params, .. } => params,
        other => panic!("{other:?}"),
    })
}

fn rcpt_params(line: &str) -> Result<RcptParams, ParseError> {
    parse_command(line.as_bytes()).map(|r| match r {
        Request::Rcpt { params, .. } => params,
        other => panic!("{other:?}"),
    })
}

fn round_trip(line: &str) {
    let req = parse_command(line.as_bytes()).unwrap();
    let wire = req.to_bytes();
    assert_eq!(parse_command(&wire[..wire.len() - 2]), Ok(req), "{line}");
}

/// RFC 3461 §4.3 RET and §4.4 ENVID (xtext-decoded).
#[test]
fn rfc3461_4_3_ret_and_4_4_envid() {
    let line = "MAIL FROM:<Alice@Example.ORG> RET=HDRS ENVID=QQ314159";
    assert_eq!(
        mail_params(line),
        Ok(MailParams {
            ret: Some(Ret::Hdrs),
            envid: Some("QQ314159".into()),
            ..MailParams::default()
        })
    );
    round_trip(line);
    assert_eq!(
        mail_params("MAIL FROM:<a@b> ret=full envid=a+2Bb+3Dc+20d").map(|p| (p.ret, p.envid)),
        Ok((Some(Ret::Full), Some("a+b=c d".into())))
    );
    round_trip("MAIL FROM:<a@b> ret=full envid=a+2Bb+3Dc+20d");
    for bad in [
        "MAIL FROM:<a@b> RET=SOME",
        "MAIL FROM:<a@b> RET",
        "MAIL FROM:<a@b> ENVID=+4",
        "MAIL FROM:<a@b> ENVID=+0A",
        "MAIL FROM:<a@b> ENVID",
    ] {
        let err = mail_params(bad).unwrap_err();
        assert!(
            matches!(err, ParseError::InvalidParameter { .. }),
            "{bad}: {err:?}"
        );
        assert_eq!(err.reply().code, 501);
    }
}

/// RFC 3461 §4.1 NOTIFY and §4.2 ORCPT.
#[test]
fn rfc3461_4_1_notify_and_4_2_orcpt() {
    let line = "RCPT TO:<Bob@Example.COM> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+40Example.COM";
    assert_eq!(
        rcpt_params(line),
        Ok(RcptParams {
            notify: Some(Notify::On {
                success: true,
                failure: true,
                delay: false
            }),
            orcpt: Some(Orcpt {
                addr_type: "rfc822".into(),
                addr: "Bob@Example.COM".into()
            }),
        })
    );
    round_trip(line);
    assert_eq!(
        rcpt_params("RCPT TO:<b@c> NOTIFY=never").map(|p| p.notify),
        Ok(Some(Notify::Never))
    );
    assert_eq!(
        rcpt_params("RCPT TO:<b@c> NOTIFY=DELAY").map(|p| p.notify),
        Ok(Some(Notify::On {
            success: false,
            failure: false,
            delay: true
        }))
    );
    assert_eq!(
        rcpt_params("RCPT TO:<b@c> ORCPT=rfc822;a;b+2Bc").map(|p| p.orcpt),
        Ok(Some(Orcpt {
            addr_type: "rfc822".into(),
            addr: "a;b+c".into()
        }))
    );
    for bad in [
        "RCPT TO:<b@c> NOTIFY=NEVER,SUCCESS",
        "RCPT TO:<b@c> NOTIFY=",
        "RCPT TO:<b@c> NOTIFY=SUCCESS,,DELAY",
        "RCPT TO:<b@c> ORCPT=rfc822",
        "RCPT TO:<b@c> ORCPT=;a@b",
        "RCPT TO:<b@c> ORCPT=rfc822;",
        "RCPT TO:<b@c> ORCPT=rfc822;a=b",
        "RCPT TO:<b@c> NOTIFY=DELAY NOTIFY=DELAY",
    ] {
        let err = rcpt_params(bad).unwrap_err();
        assert_eq!(err.reply().to_bytes()[..9], *b"501 5.5.4", "{bad}: {err:?}");
    }
    // Postmaster with DSN parameters.
    assert!(matches!(
        parse_command(b"RCPT TO:<Postmaster> NOTIFY=NEVER"),
        Ok(Request::Rcpt {
            to: ForwardPath::Postmaster,
            ..
        })
    ));
    // DSN parameters belong to RCPT / MAIL respectively.
    assert_eq!(
        parse_command(b"MAIL FROM:<a@b> NOTIFY=NEVER").unwrap_err(),
        ParseError::UnrecognizedParameter {
            keyword: "NOTIFY".into()
        }
    );
    assert_eq!(
        parse_command(b"RCPT TO:<a@b> RET=FULL").unwrap_err(),
        ParseError::UnrecognizedParameter {
            keyword: "RET".into()
        }
    );
}

/// RFC 3461 §4: xtext.
#[test]
fn rfc3461_4_xtext() {
    assert_eq!(
        xtext::decode("Bob+40Example.COM").as_deref(),
        Some(&b"Bob@Example.COM"[..])
    );
    assert_eq!(xtext::encode(b"a+b=c"), "a+2Bb+3Dc");
    assert_eq!(xtext::decode("+"), None);
}

/// RFC 4954 §5: `AUTH=` on MAIL FROM.
#[test]
fn rfc4954_5_auth_param() {
    assert_eq!(
        mail_params("MAIL FROM:<e=mc2@example.com> AUTH=e+3Dmc2@example.com").map(|p| p.auth),
        Ok(Some(AuthParam::Mailbox("e=mc2@example.com".into())))
    );
    assert_eq!(
        mail_params("MAIL FROM:<a@b> AUTH=<>").map(|p| p.auth),
        Ok(Some(AuthParam::Empty))
    );
    round_trip("MAIL FROM:<e=mc2@example.com> AUTH=e+3Dmc2@example.com");
    round_trip("MAIL FROM:<a@b> AUTH=<>");
    round_trip("MAIL FROM:<a@b> AUTH=+3C>");
    assert_eq!(
        mail_params("MAIL FROM:<a@b> AUTH")
            .unwrap_err()
            .reply()
            .code,
        501
    );
}
