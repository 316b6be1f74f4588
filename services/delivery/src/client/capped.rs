//! A bound on what one reply of the next hop may cost us in memory.
//!
//! `mail-send` parses replies with `smtp-proto`'s `ResponseReceiver`, which
//! caps the text it keeps at 4096 octets for lines with text but keeps two
//! octets of every *empty* continuation line (`250-` CRLF) without a limit:
//! a next hop sending those for the length of a timeout (minutes) would
//! make us buffer gigabytes. [`Capped`] wraps the connection and fails a
//! read once more than [`MAX_REPLY_OCTETS`] have arrived since we last
//! wrote (a command, or the data), so every reply, the greeting included,
//! is cut off at that size whatever the parser does with it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most octets one reply (or the greeting) may take. RFC 5321
/// §4.5.3.1.5 allows 512 per reply line; an EHLO reply of a few dozen
/// lines is a few KiB. Anything near this is not SMTP.
pub const MAX_REPLY_OCTETS: usize = 64 * 1024;

/// A stream whose reads fail after `cap` octets without a write between.
pub struct Capped<S> {
    inner: S,
    cap: usize,
    read: usize,
}

impl<S> Capped<S> {
    /// Wrap `inner`; nothing read yet.
    pub fn new(inner: S, cap: usize) -> Self {
        Capped {
            inner,
            cap,
            read: 0,
        }
    }

    /// The wrapped stream (for the TLS upgrade).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.read += buf.filled().len() - before;
        if self.read > self.cap {
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply longer than {} octets", self.cap),
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        if n > 0 {
            // A command (or data) went out: what comes next is a new reply.
            self.read = 0;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_fail_past_the_cap_until_the_next_write() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut c = Capped::new(a, 10);
        b.write_all(b"0123456789").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf).await.unwrap(), 10);
        b.write_all(b"x").await.unwrap();
        let e = c.read(&mut buf).await.unwrap_err();
        assert_eq!(e.to_string(), "reply longer than 10 octets");
        // A command resets the count.
        c.write_all(b"NOOP\r\n").await.unwrap();
        b.write_all(b"250 ok\r\n").await.unwrap();
        assert_eq!(c.read(&mut buf).await.unwrap(), 8);
        assert_eq!(&buf[..8], b"250 ok\r\n");
    }
}
