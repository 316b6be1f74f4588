//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 2034, RFC 3463).
//!
//! The server builds a [`Reply`] and writes [`Reply::to_bytes`]. [`parse_reply`] is the inverse;
//! it exists for round-trip tests and for a future SMTP client (the delivery tier).

use std::fmt;

/// An enhanced mail system status code `class.subject.detail` (RFC 3463 §2), e.g. `(5, 1, 3)`.
pub type EnhancedCode = (u8, u16, u16);

/// One SMTP reply, possibly multi-line.
///
/// ```abnf
/// ; RFC 5321 §4.2
/// Reply-line     = *( Reply-code "-" [ textstring ] CRLF )
///                  Reply-code [ SP textstring ] CRLF
/// Reply-code     = %x32-35 %x30-35 %x30-39
/// ; RFC 2034 §4: the enhanced code starts the text of *every* line
/// status-code    = class "." subject "." detail
/// class          = "2" / "4" / "5"
/// subject        = 1*3digit
/// detail         = 1*3digit
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code, e.g. `250`.
    pub code: u16,
    /// Enhanced status code (RFC 2034), written after the reply code on every line.
    pub enhanced: Option<EnhancedCode>,
    /// Text lines, without the code and without CRLF. An empty vector encodes as one line
    /// carrying only the code(s).
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (e.g. the EHLO response).
    pub fn multiline<I, S>(code: u16, enhanced: Option<EnhancedCode>, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            code,
            enhanced,
            lines: lines.into_iter().map(Into::into).collect(),
        }
    }

    /// `true` for 4yz replies (transient negative completion, RFC 5321 §4.2.1).
    pub fn is_transient_failure(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// `true` for 5yz replies (permanent negative completion, RFC 5321 §4.2.1).
    pub fn is_permanent_failure(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Encodes the reply as wire bytes, every line terminated by CRLF.
    ///
    /// All lines but the last use `code-`, the last uses `code SP`; the enhanced code, if any,
    /// is repeated on every line (RFC 2034 §4). CR and LF inside a text line are replaced by a
    /// space so that no caller can inject extra reply lines.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(16 + self.lines.iter().map(|l| l.len() + 16).sum::<usize>());
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let mut head = format!("{:03}", self.code);
            if let Some((c, s, d)) = self.enhanced {
                head.push(sep);
                head.push_str(&format!("{c}.{s}.{d}"));
                if !line.is_empty() {
                    head.push(' ');
                }
            } else if !line.is_empty() || sep == '-' {
                head.push(sep);
            }
            out.extend_from_slice(head.as_bytes());
            out.extend(
                line.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(String::from_utf8_lossy(&self.to_bytes()).trim_end())
    }
}

/// Why [`parse_reply`] could not return a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The input ends before the last line of the reply; read more and retry.
    #[error("need more input")]
    Incomplete,
    /// The input is not a reply.
    #[error("syntax error, expected `{expected}`")]
    Syntax {
        /// The RFC 5321 ABNF rule that did not match.
        expected: &'static str,
    },
}

/// Parses one (possibly multi-line) reply from the start of `input`.
///
/// Returns the reply and the number of bytes it occupied. Lines may end in CRLF or a bare LF
/// (lenient, client side). If the first line's text starts with an enhanced status code whose
/// class equals the first digit of the reply code, it is taken as the reply's enhanced code and
/// stripped from every line that repeats it.
///
/// ```abnf
/// ; RFC 5321 §4.2, RFC 2034 §4 (see [`Reply`])
/// Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
/// ```
pub fn parse_reply(input: &[u8]) -> Result<(Reply, usize), ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut raw_lines: Vec<&str> = Vec::new();
    loop {
        let rest = &input[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return Err(ReplyError::Incomplete);
        };
        let mut line = &rest[..lf];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        pos += lf + 1;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Syntax {
                expected: "Reply-code",
            });
        }
        if !(b'2'..=b'5').contains(&line[0]) || line[1] > b'5' {
            return Err(ReplyError::Syntax {
                expected: "Reply-code",
            });
        }
        let this_code = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        if code.is_some_and(|c| c != this_code) {
            return Err(ReplyError::Syntax {
                expected: "same Reply-code on every line",
            });
        }
        code = Some(this_code);
        let text = std::str::from_utf8(&line[3..]).map_err(|_| ReplyError::Syntax {
            expected: "textstring",
        })?;
        let (last, text) = match text.as_bytes().first() {
            None => (true, ""),
            Some(b' ') => (true, &text[1..]),
            Some(b'-') => (false, &text[1..]),
            Some(_) => {
                return Err(ReplyError::Syntax {
                    expected: "SP / \"-\" after Reply-code",
                });
            }
        };
        raw_lines.push(text);
        if last {
            break;
        }
    }
    let code = code.unwrap_or_default();
    let enhanced = raw_lines
        .first()
        .and_then(|l| split_enhanced(l))
        .filter(|((c, _, _), _)| u16::from(*c) == code / 100)
        .map(|(e, _)| e);
    let lines = raw_lines
        .iter()
        .map(|l| match (enhanced, split_enhanced(l)) {
            (Some(e), Some((le, rest))) if le == e => rest.to_owned(),
            _ => (*l).to_owned(),
        })
        .collect::<Vec<_>>();
    let lines = if lines.len() == 1 && lines[0].is_empty() {
        Vec::new()
    } else {
        lines
    };
    Ok((
        Reply {
            code,
            enhanced,
            lines,
        },
        pos,
    ))
}

/// Splits `5.1.3 text` into `((5, 1, 3), "text")`.
fn split_enhanced(text: &str) -> Option<(EnhancedCode, &str)> {
    let (head, rest) = match text.find(' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let mut parts = head.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some() || !matches!(class, "2" | "4" | "5") {
        return None;
    }
    let num = |s: &str| -> Option<u16> {
        if (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    // Leading zeros would not survive `to_bytes`; treat such text as plain text.
    let canonical = |s: &str| s.len() == 1 || !s.starts_with('0');
    if !canonical(subject) || !canonical(detail) {
        return None;
    }
    Some((
        (class.as_bytes()[0] - b'0', num(subject)?, num(detail)?),
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_single_and_multi_line() {
        let table: &[(Reply, &[u8])] = &[
            (Reply::new(250, None, "OK"), b"250 OK\r\n"),
            (
                Reply::new(250, Some((2, 1, 0)), "Sender OK"),
                b"250 2.1.0 Sender OK\r\n",
            ),
            (
                Reply::multiline(250, None, ["foo.com greets bar.com", "8BITMIME", "HELP"]),
                b"250-foo.com greets bar.com\r\n250-8BITMIME\r\n250 HELP\r\n",
            ),
            (
                Reply::multiline(550, Some((5, 7, 1)), ["a", "b"]),
                b"550-5.7.1 a\r\n550 5.7.1 b\r\n",
            ),
            (
                Reply::multiline(250, None, Vec::<String>::new()),
                b"250\r\n",
            ),
            (
                Reply::multiline(250, Some((2, 0, 0)), Vec::<String>::new()),
                b"250 2.0.0\r\n",
            ),
            (
                Reply::new(500, None, "evil\r\n250 injected"),
                b"500 evil  250 injected\r\n",
            ),
        ];
        for (reply, bytes) in table {
            assert_eq!(reply.to_bytes(), *bytes, "{reply:?}");
        }
    }

    #[test]
    fn parses_round_trip() {
        let table: &[&[u8]] = &[
            b"250 OK\r\n",
            b"250 2.1.0 Sender OK\r\n",
            b"250-foo.com greets bar.com\r\n250-8BITMIME\r\n250 HELP\r\n",
            b"550-5.7.1 a\r\n550 5.7.1 b\r\n",
            b"250\r\n",
            b"250 2.0.0\r\n",
            b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
        ];
        for bytes in table {
            let (reply, used) = parse_reply(bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(reply.to_bytes(), *bytes);
        }
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_reply(b"250-a\r\n250 "), Err(ReplyError::Incomplete));
        assert_eq!(parse_reply(b""), Err(ReplyError::Incomplete));
        assert!(matches!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::Syntax { .. })
        ));
        assert!(matches!(
            parse_reply(b"hello\r\n"),
            Err(ReplyError::Syntax { .. })
        ));
        assert!(matches!(
            parse_reply(b"250xOK\r\n"),
            Err(ReplyError::Syntax { .. })
        ));
    }

    #[test]
    fn enhanced_class_must_match_code() {
        let (reply, _) = parse_reply(b"250 5.1.1 odd\r\n").unwrap();
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.lines, vec!["5.1.1 odd".to_owned()]);
    }
}
