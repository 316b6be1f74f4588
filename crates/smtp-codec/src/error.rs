//! Error values of the codec. Each one knows the reply the server should send.

use crate::reply::Reply;

/// Why a command line could not be turned into a [`Request`](crate::Request).
///
/// Every variant maps to exactly one reply via [`ParseError::reply`]:
///
/// | variant | reply | source |
/// |---|---|---|
/// | [`Empty`](Self::Empty) | `500 5.5.2` | RFC 5321 §4.2.4, RFC 3463 X.5.2 (syntax error) |
/// | [`UnknownCommand`](Self::UnknownCommand) | `500 5.5.1` | RFC 5321 §4.2.4, RFC 3463 X.5.1 (invalid command) |
/// | [`Syntax`](Self::Syntax) | `501 5.5.4` | RFC 5321 §4.2.4, RFC 3463 X.5.4 (invalid arguments) |
/// | [`BadSender`](Self::BadSender) | `501 5.1.7` | RFC 3463 X.1.7 (bad sender's mailbox address syntax) |
/// | [`BadRecipient`](Self::BadRecipient) | `501 5.1.3` | RFC 3463 X.1.3 (bad destination mailbox address syntax) |
/// | [`InvalidParameter`](Self::InvalidParameter) | `501 5.5.4` | known parameter with a bad value |
/// | [`UnrecognizedParameter`](Self::UnrecognizedParameter) | `555 5.5.4` | RFC 5321 §4.1.1.11, §4.2.3 |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line is empty (or only white space).
    #[error("empty command line")]
    Empty,
    /// The verb is not one this codec knows.
    #[error("unrecognized command")]
    UnknownCommand {
        /// The verb as received (lossy UTF-8, at most 32 characters), for logging only.
        verb: String,
    },
    /// A known verb with malformed or missing arguments.
    #[error("syntax error, expected `{expected}`")]
    Syntax {
        /// What the command should have looked like (RFC 5321 §4.1.1 notation).
        expected: &'static str,
    },
    /// `MAIL FROM:` with a reverse-path that does not parse.
    #[error("bad sender address syntax, expected `{expected}`")]
    BadSender {
        /// The RFC 5321 §4.1.2 ABNF rule that did not match.
        expected: &'static str,
    },
    /// `RCPT TO:` with a forward-path that does not parse.
    #[error("bad recipient address syntax, expected `{expected}`")]
    BadRecipient {
        /// The RFC 5321 §4.1.2 ABNF rule that did not match.
        expected: &'static str,
    },
    /// A parameter this codec knows, with a missing, malformed or duplicated value.
    #[error("invalid parameter {keyword}, expected `{expected}`")]
    InvalidParameter {
        /// The upper-cased keyword, or empty if the keyword itself was malformed.
        keyword: String,
        /// The ABNF rule that did not match.
        expected: &'static str,
    },
    /// A well-formed `esmtp-param` whose keyword this codec does not implement.
    #[error("unrecognized parameter {keyword}")]
    UnrecognizedParameter {
        /// The upper-cased keyword (validated to `esmtp-keyword` syntax, safe to echo).
        keyword: String,
    },
}

impl ParseError {
    /// The reply the server should send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Empty => Reply::new(500, Some((5, 5, 2)), "Error: bad syntax"),
            Self::UnknownCommand { .. } => {
                Reply::new(500, Some((5, 5, 1)), "Error: command not recognized")
            }
            Self::Syntax { expected } => {
                Reply::new(501, Some((5, 5, 4)), format!("Syntax: {expected}"))
            }
            Self::BadSender { .. } => Reply::new(501, Some((5, 1, 7)), "Bad sender address syntax"),
            Self::BadRecipient { .. } => {
                Reply::new(501, Some((5, 1, 3)), "Bad recipient address syntax")
            }
            Self::InvalidParameter { keyword, .. } if !keyword.is_empty() => Reply::new(
                501,
                Some((5, 5, 4)),
                format!("Bad {keyword} parameter syntax"),
            ),
            Self::InvalidParameter { .. } => {
                Reply::new(501, Some((5, 5, 4)), "Syntax error in parameters")
            }
            Self::UnrecognizedParameter { keyword } => Reply::new(
                555,
                Some((5, 5, 4)),
                format!("Unsupported option: {keyword}"),
            ),
        }
    }
}

/// Errors of the command-line framer [`LineReader`](crate::LineReader).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line (including its terminator) was longer than the configured limit. The reader has
    /// dropped it and reports this once; it resynchronises at the next LF.
    #[error("line exceeds {max} bytes")]
    TooLong {
        /// The configured limit, in octets including CRLF.
        max: usize,
    },
}

impl LineError {
    /// The reply the server should send: `500 5.5.2 Line too long` (RFC 5321 §4.5.3.1.4
    /// allows `500 Line too long`; X.5.2 is "syntax error").
    pub fn reply(&self) -> Reply {
        match self {
            Self::TooLong { .. } => Reply::new(500, Some((5, 5, 2)), "Line too long"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let table: &[(ParseError, &[u8])] = &[
            (ParseError::Empty, b"500 5.5.2 Error: bad syntax\r\n"),
            (
                ParseError::UnknownCommand { verb: "FOO".into() },
                b"500 5.5.1 Error: command not recognized\r\n",
            ),
            (
                ParseError::Syntax { expected: "DATA" },
                b"501 5.5.4 Syntax: DATA\r\n",
            ),
            (
                ParseError::BadSender {
                    expected: "Mailbox",
                },
                b"501 5.1.7 Bad sender address syntax\r\n",
            ),
            (
                ParseError::BadRecipient {
                    expected: "Mailbox",
                },
                b"501 5.1.3 Bad recipient address syntax\r\n",
            ),
            (
                ParseError::InvalidParameter {
                    keyword: "SIZE".into(),
                    expected: "1*20DIGIT",
                },
                b"501 5.5.4 Bad SIZE parameter syntax\r\n",
            ),
            (
                ParseError::InvalidParameter {
                    keyword: String::new(),
                    expected: "esmtp-keyword",
                },
                b"501 5.5.4 Syntax error in parameters\r\n",
            ),
            (
                ParseError::UnrecognizedParameter {
                    keyword: "XFOO".into(),
                },
                b"555 5.5.4 Unsupported option: XFOO\r\n",
            ),
        ];
        for (err, bytes) in table {
            assert_eq!(err.reply().to_bytes(), *bytes, "{err:?}");
        }
        assert_eq!(
            LineError::TooLong { max: 512 }.reply().to_bytes(),
            b"500 5.5.2 Line too long\r\n"
        );
    }
}
