use super::*;

const MULTI: &[u8] = b"From: Alice Example <alice@example.org>\r\n\
To: bob@example.net, Group: c@d.e, f@g.h;\r\n\
Subject: =?utf-8?q?caf=C3=A9?= test\r\n\
Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\
Message-ID: <B27397-0100000@example.org>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"XX\"\r\n\
\r\n\
preamble\r\n\
--XX\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello\r\nWorld\r\n\
--XX\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: c@d.e\r\n\
Subject: inner\r\n\
\r\n\
inner body\r\n\
--XX\r\n\
Content-Type: application/octet-stream; name=\"a.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"a.bin\"\r\n\
\r\n\
AAEC\r\n\
--XX--\r\n";

fn s(b: &[u8], r: (u64, u64)) -> &str {
    std::str::from_utf8(&b[r.0 as usize..r.1 as usize]).unwrap()
}

#[test]
fn multipart_structure() {
    let st = analyze(MULTI);
    assert_eq!(st.size, MULTI.len() as u64);
    assert_eq!(
        st.envelope.subject.as_deref(),
        Some("=?utf-8?q?caf=C3=A9?= test")
    );
    assert_eq!(st.envelope.from[0].name.as_deref(), Some("Alice Example"));
    assert_eq!(st.envelope.from[0].mailbox.as_deref(), Some("alice"));
    assert_eq!(st.envelope.sender, st.envelope.from);
    assert_eq!(
        st.envelope.message_id.as_deref(),
        Some("<B27397-0100000@example.org>")
    );
    let b = &st.body;
    assert_eq!(b.media_type, "multipart");
    assert_eq!(b.subtype, "mixed");
    assert_eq!(b.children.len(), 3);
    let t = &b.children[0];
    assert_eq!(
        (t.media_type.as_str(), t.subtype.as_str()),
        ("text", "plain")
    );
    assert_eq!(s(MULTI, t.body), "Hello\r\nWorld");
    assert_eq!(t.size, 12);
    assert_eq!(t.lines, Some(2));
    assert_eq!(
        s(MULTI, t.header),
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let m = &b.children[1];
    assert_eq!(m.media_type, "message");
    let (env, inner) = &**m.message.as_ref().unwrap();
    assert_eq!(env.subject.as_deref(), Some("inner"));
    assert_eq!(s(MULTI, inner.body), "inner body");
    assert_eq!(
        s(MULTI, m.body),
        "From: c@d.e\r\nSubject: inner\r\n\r\ninner body"
    );
    let a = &b.children[2];
    assert_eq!(a.encoding, "base64");
    assert_eq!(s(MULTI, a.body), "AAEC");
    assert_eq!(a.disposition.as_ref().unwrap().0, "attachment");
    // sections
    assert_eq!(
        s(MULTI, st.section_range(&[1], SectionText::Body).unwrap()),
        "Hello\r\nWorld"
    );
    assert_eq!(
        s(MULTI, st.section_range(&[2, 1], SectionText::Body).unwrap()),
        "inner body"
    );
    assert_eq!(
        s(MULTI, st.section_range(&[2], SectionText::Header).unwrap()),
        "From: c@d.e\r\nSubject: inner\r\n\r\n"
    );
    assert_eq!(
        s(MULTI, st.section_range(&[2], SectionText::Text).unwrap()),
        "inner body"
    );
    assert!(st.section_range(&[4], SectionText::Body).is_none());
    assert!(st.section_range(&[1, 1], SectionText::Body).is_none());
    let j = st.to_json();
    assert_eq!(Structure::from_json(&j).unwrap(), st);
}

#[test]
fn simple_and_garbage() {
    let m = b"Subject: hi\r\n\r\nbody\r\n";
    let st = analyze(m);
    assert_eq!(
        s(m, st.section_range(&[1], SectionText::Body).unwrap()),
        "body\r\n"
    );
    assert_eq!(
        s(m, st.section_range(&[], SectionText::Header).unwrap()),
        "Subject: hi\r\n\r\n"
    );
    for junk in [
        &b""[..],
        b"\r\n",
        b"garbage",
        b"\x00\xff\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n--a\r\n",
    ] {
        let _ = analyze(junk);
    }
    let mut deep = Vec::new();
    for i in 0..200 {
        deep.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes(),
        );
    }
    let st = analyze(&deep);
    let _ = st.to_json();
}

#[test]
fn header_filter() {
    let h = b"A: 1\r\nB: 2\r\n  cont\r\nC: 3\r\n\r\n";
    assert_eq!(
        header_fields(h, &["b".into()], false),
        b"B: 2\r\n  cont\r\n\r\n"
    );
    assert_eq!(
        header_fields(h, &["b".into()], true),
        b"A: 1\r\nC: 3\r\n\r\n"
    );
}
