//! Pure helpers of the POP3 server: splitting input into command lines,
//! byte-stuffing multi-line responses, `TOP` extraction, SASL PLAIN decoding.
//! No I/O here, so every function is easy to test on its own.

/// One item of client input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A complete line without its CRLF (or bare LF).
    Ok(Vec<u8>),
    /// A line longer than the limit; its bytes are discarded up to the next LF.
    TooLong,
}

/// Splits buffered input into lines of at most `max` octets (without CRLF).
#[derive(Debug)]
pub(crate) struct LineReader {
    buf: Vec<u8>,
    max: usize,
    /// Inside an overlong line: drop bytes until the next LF.
    discarding: bool,
}

impl LineReader {
    pub(crate) fn new(max: usize) -> Self {
        LineReader {
            buf: Vec::new(),
            max,
            discarding: false,
        }
    }

    /// Add received bytes.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, if any. An overlong line yields one
    /// [`Line::TooLong`] as soon as it is known to be too long.
    pub(crate) fn next_line(&mut self) -> Option<Line> {
        loop {
            let lf = self.buf.iter().position(|b| *b == b'\n');
            if self.discarding {
                match lf {
                    Some(p) => {
                        self.buf.drain(..=p);
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        self.buf.clear();
                        return None;
                    }
                }
            }
            return match lf {
                Some(p) => {
                    let mut line: Vec<u8> = self.buf.drain(..=p).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > self.max {
                        Some(Line::TooLong)
                    } else {
                        Some(Line::Ok(line))
                    }
                }
                // Allow for the CR of a CRLF not yet followed by its LF.
                None if self.buf.len() > self.max + 1 => {
                    self.buf.clear();
                    self.discarding = true;
                    Some(Line::TooLong)
                }
                None => None,
            };
        }
    }

    /// Drop everything buffered (pipelined plaintext before a TLS upgrade).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }
}

/// Append `data` to `out` byte-stuffed (RFC 1939 §3): every line that starts
/// with `.` gets another `.` in front. `bol` tells whether `data` starts at
/// the beginning of a line and is updated to whether it ends at one. A bare
/// LF also counts as a line end, so no client can ever see a lone `.` line.
pub(crate) fn stuff_into(out: &mut Vec<u8>, data: &[u8], bol: &mut bool) {
    out.reserve(data.len() + 16);
    let mut start = 0;
    for (i, b) in data.iter().enumerate() {
        if *bol && *b == b'.' {
            out.extend_from_slice(&data[start..i]);
            out.push(b'.');
            start = i;
        }
        *bol = *b == b'\n';
    }
    out.extend_from_slice(&data[start..]);
}

/// Append a complete multi-line body: byte-stuffed `parts` (as one
/// continuous text), a CRLF if the text does not end with a line end, and
/// the terminating `.` line.
pub(crate) fn multiline_into(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let mut bol = true;
    for p in parts {
        stuff_into(out, p, &mut bol);
    }
    if !bol {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Length of the part of `msg` that `TOP n k` sends: the header, the empty
/// line separating it from the body, and the first `k` body lines. A
/// message without an empty line is all header.
pub(crate) fn top_len(msg: &[u8], k: u64) -> usize {
    let next_line_end = |pos: usize| -> usize {
        match msg[pos..].iter().position(|b| *b == b'\n') {
            Some(p) => pos + p + 1,
            None => msg.len(),
        }
    };
    let mut pos = 0;
    loop {
        if pos >= msg.len() {
            return msg.len();
        }
        let end = next_line_end(pos);
        let line = &msg[pos..end];
        pos = end;
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut n = 0;
    while n < k && pos < msg.len() {
        pos = next_line_end(pos);
        n += 1;
    }
    pos
}

/// Decode a SASL PLAIN response (RFC 4616): base64 of
/// `authzid NUL authcid NUL passwd`. Returns (authzid, authcid, passwd);
/// `None` if malformed.
pub(crate) fn decode_plain(b64: &str) -> Option<(String, String, String)> {
    use base64::Engine;
    let b64 = b64.trim();
    // RFC 5034 §4: "=" is an empty initial response.
    let raw = if b64 == "=" {
        Vec::new()
    } else {
        base64::engine::general_purpose::STANDARD.decode(b64).ok()?
    };
    let mut parts = raw.split(|b| *b == 0);
    let authzid = parts.next()?;
    let authcid = parts.next()?;
    let passwd = parts.next()?;
    if parts.next().is_some() || authcid.is_empty() || passwd.is_empty() {
        return None;
    }
    Some((
        String::from_utf8(authzid.to_vec()).ok()?,
        String::from_utf8(authcid.to_vec()).ok()?,
        String::from_utf8(passwd.to_vec()).ok()?,
    ))
}

/// Parse a message number argument: decimal digits only, at least 1.
pub(crate) fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut LineReader) -> Vec<Line> {
        std::iter::from_fn(|| r.next_line()).collect()
    }

    #[test]
    fn splits_lines() {
        let mut r = LineReader::new(10);
        r.push(b"STAT\r\nLIST 1\nNO");
        assert_eq!(
            lines(&mut r),
            vec![Line::Ok(b"STAT".to_vec()), Line::Ok(b"LIST 1".to_vec())]
        );
        r.push(b"OP\r\n");
        assert_eq!(lines(&mut r), vec![Line::Ok(b"NOOP".to_vec())]);
    }

    #[test]
    fn overlong_lines_are_reported_once_and_skipped() {
        let mut r = LineReader::new(10);
        r.push(b"0123456789\r\n");
        assert_eq!(lines(&mut r), vec![Line::Ok(b"0123456789".to_vec())]);
        r.push(b"0123456789AB");
        assert_eq!(lines(&mut r), vec![Line::TooLong]);
        r.push(b"more and more");
        assert_eq!(lines(&mut r), vec![]);
        r.push(b"end\r\nNOOP\r\n");
        assert_eq!(lines(&mut r), vec![Line::Ok(b"NOOP".to_vec())]);
        r.push(b"0123456789A\r\nQUIT\r\n");
        assert_eq!(
            lines(&mut r),
            vec![Line::TooLong, Line::Ok(b"QUIT".to_vec())]
        );
    }

    #[test]
    fn byte_stuffing() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (
                b"a\r\n.b\r\n..c\r\nd.e\r\n",
                b"a\r\n..b\r\n...c\r\nd.e\r\n.\r\n",
            ),
            (b"x\n.\n", b"x\n..\n.\r\n"),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            multiline_into(&mut out, &[input]);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Split across parts: the line start carries over.
        let mut out = Vec::new();
        multiline_into(&mut out, &[b"H: v\r\n", b".body\r\n"]);
        assert_eq!(out, b"H: v\r\n..body\r\n.\r\n");
        let mut out = Vec::new();
        multiline_into(&mut out, &[b"H: v\r\nx", b".body\r\n"]);
        assert_eq!(out, b"H: v\r\nx.body\r\n.\r\n");
    }

    #[test]
    fn top() {
        let m = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        let cases: &[(u64, &[u8])] = &[
            (0, b"A: 1\r\nB: 2\r\n\r\n"),
            (1, b"A: 1\r\nB: 2\r\n\r\nl1\r\n"),
            (3, m),
            (100, m),
        ];
        for (k, want) in cases {
            assert_eq!(&m[..top_len(m, *k)], *want, "k={k}");
        }
        assert_eq!(top_len(b"A: 1\r\nB: 2\r\n", 5), 12);
        assert_eq!(top_len(b"", 5), 0);
        assert_eq!(top_len(b"A: 1\r\n\r\nno newline", 5), 18);
    }

    #[test]
    fn plain() {
        use base64::Engine;
        let e = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_plain(&e(b"\0u@x\0pw")),
            Some((String::new(), "u@x".into(), "pw".into()))
        );
        assert_eq!(
            decode_plain(&e(b"a\0u\0p w")),
            Some(("a".into(), "u".into(), "p w".into()))
        );
        for bad in [
            "",
            "=",
            "!!!",
            &e(b"u\0pw"),
            &e(b"\0\0pw"),
            &e(b"\0u\0"),
            &e(b"\0u\0p\0x"),
        ] {
            assert_eq!(decode_plain(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("1"), Some(1));
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("4294967295"), Some(4294967295));
        for bad in ["", "-1", "+1", "1a", "99999999999", " 1", "٣"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }
}
