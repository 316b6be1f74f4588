//! Command-line framing (RFC 5321 §2.3.8, §4.5.3.1.4).

use crate::error::LineError;

/// Splits the client's byte stream into command lines.
///
/// Feed bytes with [`push`](Self::push), then call [`next_line`](Self::next_line) until it
/// returns `None`. Lines are returned **without** their terminator, ready for
/// [`parse_command`](crate::parse_command).
///
/// * **Terminator.** CRLF, or a bare LF. RFC 5321 §2.3.8 requires CRLF, but like Postfix the
///   reader accepts a bare LF for *commands*: a command line is never stored or relayed, so
///   accepting LF here cannot smuggle anything. (Message content is different, see
///   [`DataReceiver`](crate::DataReceiver).) [`last_line_had_bare_lf`](Self::last_line_had_bare_lf)
///   tells the server, e.g. for logging.
/// * **Length.** A line longer than `max_line_len` octets *including* its terminator is
///   dropped: `next_line` yields `Err(LineError::TooLong)` once, then silently discards input
///   up to and including the next LF, and continues with the line after it. The server replies
///   [`LineError::reply`] (`500 5.5.2`) and keeps the session.
/// * **Pipelining / STARTTLS.** Bytes received after the last complete line stay buffered and
///   are visible via [`buffered`](Self::buffered). After taking a `STARTTLS` line the server
///   must check that nothing is buffered and drop it with [`take_buffered`](Self::take_buffered)
///   before the TLS handshake — plaintext pipelined after STARTTLS must never be executed
///   inside the TLS session (CVE-2011-0411, RFC 3207 §4.2). The same two methods hand
///   buffered message data to a [`DataReceiver`](crate::DataReceiver) after `DATA`/`BDAT`.
#[derive(Debug, Clone)]
pub struct LineReader {
    /// Received bytes not yet returned as lines.
    buf: Vec<u8>,
    /// `buf[..scanned]` is known to contain no LF, so searches resume there.
    scanned: usize,
    /// Limit in octets including the terminator.
    max_line_len: usize,
    /// Dropping the rest of an over-long line until the next LF.
    discarding: bool,
    /// The last returned line ended with LF not preceded by CR.
    last_bare_lf: bool,
}

impl LineReader {
    /// Default limit: 4096 octets, as smtp-proto uses. RFC 5321 §4.5.3.1.4 only guarantees
    /// 512 (plus extension allowances, e.g. RFC 1870 §3 adds 26 for SIZE=), while RFC 4954 §4
    /// asks for 12288 on `AUTH` lines; servers offering GSSAPI should configure more.
    pub const DEFAULT_MAX_LINE_LEN: usize = 4096;

    /// A reader with the given line limit (octets including CRLF, at least 3).
    pub fn new(max_line_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            max_line_len: max_line_len.max(3),
            discarding: false,
            last_bare_lf: false,
        }
    }

    /// Appends received bytes. While an over-long line is being discarded, its bytes are
    /// dropped here instead of buffered, so memory stays bounded by about `max_line_len`
    /// plus the size of one `push`.
    pub fn push(&mut self, input: &[u8]) {
        let mut input = input;
        if self.discarding {
            match input.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.discarding = false;
                    input = &input[i + 1..];
                }
                None => return,
            }
        }
        self.buf.extend_from_slice(input);
    }

    /// Returns the next complete line (without CRLF / LF), `None` if more input is needed, or
    /// `Err(TooLong)` once per over-long line.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        if self.discarding {
            // Only reachable if `take_buffered` was not used; `push` normally handles this.
            match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.buf.drain(..=i);
                    self.discarding = false;
                    self.scanned = 0;
                }
                None => {
                    self.buf.clear();
                    self.scanned = 0;
                    return None;
                }
            }
        }
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(rel) => {
                let lf = self.scanned + rel;
                self.scanned = 0;
                if lf + 1 > self.max_line_len {
                    self.buf.drain(..=lf);
                    return Some(Err(LineError::TooLong {
                        max: self.max_line_len,
                    }));
                }
                let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
                line.pop(); // LF
                self.last_bare_lf = line.last() != Some(&b'\r');
                if !self.last_bare_lf {
                    line.pop(); // CR
                }
                Some(Ok(line))
            }
            None if self.buf.len() >= self.max_line_len => {
                // No LF within the limit: whatever follows, the line is too long.
                self.buf.clear();
                self.scanned = 0;
                self.discarding = true;
                Some(Err(LineError::TooLong {
                    max: self.max_line_len,
                }))
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// `true` if the line most recently returned by `next_line` ended in a bare LF.
    pub fn last_line_had_bare_lf(&self) -> bool {
        self.last_bare_lf
    }

    /// Bytes received but not yet returned as a line (pipelined commands or message data).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Removes and returns everything buffered, and ends any discard state. Use after
    /// `STARTTLS` (to drop it) and after `DATA`/`BDAT` (to feed it to the data receiver).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.scanned = 0;
        self.discarding = false;
        std::mem::take(&mut self.buf)
    }
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_LINE_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut LineReader) -> Vec<Result<Vec<u8>, LineError>> {
        std::iter::from_fn(|| r.next_line()).collect()
    }

    #[test]
    fn splits_crlf_and_bare_lf() {
        let mut r = LineReader::new(64);
        r.push(b"EHLO a\r\nNOOP\nQUIT\r\npartial");
        assert_eq!(r.next_line(), Some(Ok(b"EHLO a".to_vec())));
        assert!(!r.last_line_had_bare_lf());
        assert_eq!(r.next_line(), Some(Ok(b"NOOP".to_vec())));
        assert!(r.last_line_had_bare_lf());
        assert_eq!(r.next_line(), Some(Ok(b"QUIT".to_vec())));
        assert_eq!(r.next_line(), None);
        assert_eq!(r.buffered(), b"partial");
        r.push(b"\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"partial".to_vec())));
        assert_eq!(r.next_line(), None);
    }

    #[test]
    fn bare_cr_is_not_a_terminator() {
        let mut r = LineReader::new(64);
        r.push(b"NOOP\rQUIT\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"NOOP\rQUIT".to_vec())));
    }

    #[test]
    fn limit_includes_crlf() {
        let mut r = LineReader::new(8);
        r.push(b"123456\r\n1234567\r\nok\r\n");
        assert_eq!(
            drain(&mut r),
            vec![
                Ok(b"123456".to_vec()),
                Err(LineError::TooLong { max: 8 }),
                Ok(b"ok".to_vec()),
            ]
        );
    }

    #[test]
    fn too_long_reported_once_then_resync() {
        let mut r = LineReader::new(8);
        r.push(b"0123456789");
        assert_eq!(r.next_line(), Some(Err(LineError::TooLong { max: 8 })));
        assert_eq!(r.next_line(), None);
        r.push(b"more garbage without newline");
        assert_eq!(r.next_line(), None);
        assert!(r.buffered().is_empty());
        r.push(b"tail\r\nNOOP\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"NOOP".to_vec())));
        assert_eq!(r.next_line(), None);
    }

    #[test]
    fn starttls_pipelining_is_discardable() {
        let mut r = LineReader::default();
        r.push(b"STARTTLS\r\nMAIL FROM:<evil@example>\r\n");
        assert_eq!(r.next_line(), Some(Ok(b"STARTTLS".to_vec())));
        assert_eq!(r.buffered(), b"MAIL FROM:<evil@example>\r\n");
        assert_eq!(r.take_buffered(), b"MAIL FROM:<evil@example>\r\n");
        assert_eq!(r.next_line(), None);
    }
}
