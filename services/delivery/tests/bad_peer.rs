//! Bad input from the other side: next hops scripted on raw TCP (aiosmtpd
//! cannot send garbage) that send garbage, never answer, answer a byte at a
//! time, send endless replies or drop the connection mid-DATA. Every one
//! must end the attempt in a temporary failure (`Unreachable` or
//! `Deferred`, never `Delivered` or `Rejected`) within the configured
//! timeouts, with the connection closed so the worker is free again
//! (docs/delivery.md, "The SMTP transaction").

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use posthorn_delivery::client::{Attempt, Job, Timeouts, attempt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

/// The timeout of the step under test.
const STEP: Duration = Duration::from_secs(1);

/// Bounds a hang, not a speed: an attempt whose step under test has a 1 s
/// timeout must end well before this even on a loaded two-core machine
/// (docs/testing.md); an attempt that waited for the peer instead (a
/// per-read timeout, a reply that is never cut off, any other step's
/// timeout: see `patient`) takes far longer.
const HANG: Duration = Duration::from_secs(15);

/// Every timeout past `HANG`, so that only the step under test (given
/// `STEP`) or the bad input itself can end an attempt in time.
fn patient() -> Timeouts {
    let long = Duration::from_secs(60);
    Timeouts {
        connect: long,
        greeting: long,
        mail: long,
        rcpt: long,
        data_init: long,
        data_block: long,
        data_end: long,
    }
}

fn job(message: &[u8]) -> Job<'_> {
    Job {
        helo: "client.test",
        mail_from: "a@example.test",
        rcpt: "b@remote.test",
        notify: "",
        orcpt: "",
        ret: "",
        envid: "",
        body_type: "",
        needs_smtputf8: false,
        message,
    }
}

/// A peer that accepts one connection and runs `script` on it. The task
/// ends when the script does; scripts that hold the connection end when
/// the client closes it.
async fn peer<F, Fut>(script: F) -> (SocketAddr, JoinHandle<()>)
where
    F: FnOnce(BufReader<OwnedReadHalf>, OwnedWriteHalf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (r, w) = s.into_split();
        script(BufReader::new(r), w).await;
    });
    (addr, task)
}

/// Reads one command line; `None` at EOF.
async fn command(r: &mut BufReader<OwnedReadHalf>) -> Option<String> {
    let mut line = String::new();
    match r.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

/// Greets and answers EHLO, MAIL and RCPT positively (one reply per line
/// read); `false` if the client went away.
async fn up_to_rcpt(r: &mut BufReader<OwnedReadHalf>, w: &mut OwnedWriteHalf) -> bool {
    if w.write_all(b"220 peer.test ESMTP\r\n").await.is_err() {
        return false;
    }
    for reply in ["250 peer.test\r\n", "250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n"] {
        if command(r).await.is_none() || w.write_all(reply.as_bytes()).await.is_err() {
            return false;
        }
    }
    true
}

/// Up to and including the 354 to DATA.
async fn up_to_data(r: &mut BufReader<OwnedReadHalf>, w: &mut OwnedWriteHalf) -> bool {
    up_to_rcpt(r, w).await
        && command(r).await.is_some()
        && w.write_all(b"354 go ahead\r\n").await.is_ok()
}

/// Holds the connection, answering nothing, until the client closes it.
async fn hold(mut r: BufReader<OwnedReadHalf>) {
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

/// Writes `bytes` one at a time, `every` apart, until done or the client
/// has gone.
async fn dribble(w: &mut OwnedWriteHalf, bytes: &[u8], every: Duration) {
    for b in bytes {
        if w.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Writes `unit` over and over, at most `total` octets, then holds the
/// connection (so only a cut-off, not an EOF, ends the reply early).
async fn flood(r: BufReader<OwnedReadHalf>, w: &mut OwnedWriteHalf, unit: &[u8], total: usize) {
    let chunk = unit.repeat(64 * 1024 / unit.len());
    let mut sent = 0;
    while sent < total {
        if w.write_all(&chunk).await.is_err() {
            return;
        }
        sent += chunk.len();
    }
    hold(r).await;
}

/// Runs the attempt and checks it failed temporarily, within `HANG`, and
/// that the peer saw the connection closed afterwards (the worker holds
/// nothing).
async fn temporary(
    (addr, peer): (SocketAddr, JoinHandle<()>),
    message: &[u8],
    t: &Timeouts,
) -> Attempt {
    let start = Instant::now();
    let a = tokio::time::timeout(HANG, attempt(addr, "mx.test", &job(message), t, None))
        .await
        .unwrap_or_else(|_| panic!("the attempt was still running after {HANG:?}"));
    assert!(
        matches!(a, Attempt::Unreachable(_) | Attempt::Deferred(_)),
        "not a temporary failure: {a:?}"
    );
    // Bounds a hang (see HANG).
    assert!(start.elapsed() < HANG, "took {:?}: {a:?}", start.elapsed());
    // The client has closed the connection: every script ends at EOF or a
    // failed write. Bounds a hang.
    tokio::time::timeout(HANG, peer)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after the attempt: {a:?}"))
        .unwrap();
    a
}

fn unreachable_with(a: &Attempt, what: &str) {
    assert!(
        matches!(a, Attempt::Unreachable(w) if w.contains(what)),
        "expected Unreachable(..{what}..), got {a:?}"
    );
}

fn deferred_with(a: &Attempt, what: &str) {
    assert!(
        matches!(a, Attempt::Deferred(w) if w.contains(what)),
        "expected Deferred(..{what}..), got {a:?}"
    );
}

const GARBAGE: &[&[u8]] = &[
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe\x00\r\n",
    b"\r\n\r\n",
    b"2200 too many digits\r\n",
    b"22 too few digits\r\n",
    b"220\x00nul separator\r\n",
];

#[tokio::test]
async fn garbage_instead_of_a_greeting_is_unreachable() {
    for g in GARBAGE {
        let p = peer(move |r, mut w| async move {
            let _ = w.write_all(g).await;
            hold(r).await;
        })
        .await;
        let a = temporary(p, b"x\r\n", &patient()).await;
        // Not the timeout: the garbage itself ends it.
        unreachable_with(&a, "greeting: ");
    }
}

#[tokio::test]
async fn garbage_instead_of_a_reply_defers() {
    // To EHLO: the next address.
    for g in GARBAGE {
        let p = peer(move |mut r, mut w| async move {
            let _ = w.write_all(b"220 peer.test\r\n").await;
            if command(&mut r).await.is_some() {
                let _ = w.write_all(g).await;
            }
            hold(r).await;
        })
        .await;
        let a = temporary(p, b"x\r\n", &patient()).await;
        unreachable_with(&a, "EHLO");
    }
    // To MAIL.
    for g in GARBAGE {
        let p = peer(move |mut r, mut w| async move {
            let _ = w.write_all(b"220 peer.test\r\n").await;
            for reply in [&b"250 peer.test\r\n"[..], g] {
                if command(&mut r).await.is_none() || w.write_all(reply).await.is_err() {
                    return;
                }
            }
            hold(r).await;
        })
        .await;
        let a = temporary(p, b"x\r\n", &patient()).await;
        deferred_with(&a, "MAIL: ");
    }
    // After the final dot: never taken for a 250 (nor a 5xx).
    for g in GARBAGE {
        let p = peer(move |mut r, mut w| async move {
            if !up_to_data(&mut r, &mut w).await {
                return;
            }
            while let Some(line) = command(&mut r).await {
                if line == ".\r\n" {
                    let _ = w.write_all(g).await;
                    break;
                }
            }
            hold(r).await;
        })
        .await;
        let a = temporary(p, b"x\r\n", &patient()).await;
        deferred_with(&a, "end of data: ");
    }
}

#[tokio::test]
async fn garbage_or_silence_instead_of_a_tls_handshake_is_unreachable() {
    // After `220` to STARTTLS: garbage, or nothing at all (the handshake
    // times out with the MAIL timeout).
    for g in [&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..], b""] {
        let p = peer(move |mut r, mut w| async move {
            let _ = w.write_all(b"220 peer.test\r\n").await;
            for reply in [
                &b"250-peer.test\r\n250 STARTTLS\r\n"[..],
                b"220 go ahead\r\n",
            ] {
                if command(&mut r).await.is_none() || w.write_all(reply).await.is_err() {
                    return;
                }
            }
            let _ = w.write_all(g).await;
            hold(r).await;
        })
        .await;
        let a = temporary(
            p,
            b"x\r\n",
            &Timeouts {
                mail: STEP,
                ..patient()
            },
        )
        .await;
        unreachable_with(&a, "TLS handshake: ");
    }
    // Garbage instead of the reply to STARTTLS.
    let p = peer(move |mut r, mut w| async move {
        let _ = w.write_all(b"220 peer.test\r\n").await;
        for reply in [&b"250-peer.test\r\n250 STARTTLS\r\n"[..], GARBAGE[0]] {
            if command(&mut r).await.is_none() || w.write_all(reply).await.is_err() {
                return;
            }
        }
        hold(r).await;
    })
    .await;
    let a = temporary(p, b"x\r\n", &patient()).await;
    unreachable_with(&a, "STARTTLS: ");
}

#[tokio::test]
async fn a_peer_that_never_answers_is_left_after_the_timeout() {
    // Accepts TCP (the kernel completes the handshake: the listener is
    // open) and never says a word.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let start = Instant::now();
    let a = attempt(
        addr,
        "mx.test",
        &job(b"x\r\n"),
        &Timeouts {
            greeting: STEP,
            ..patient()
        },
        None,
    )
    .await;
    // Bounds a hang (see HANG).
    assert!(start.elapsed() < HANG, "took {:?}", start.elapsed());
    unreachable_with(&a, "no greeting (timeout)");
    drop(l);

    // Accepts and reads, never answers.
    let p = peer(|r, w| async move {
        hold(r).await;
        drop(w); // Not before: dropping the write half sends a FIN.
    })
    .await;
    let a = temporary(
        p,
        b"x\r\n",
        &Timeouts {
            greeting: STEP,
            ..patient()
        },
    )
    .await;
    unreachable_with(&a, "no greeting (timeout)");
}

/// A reply sent one octet at a time, 250 ms apart, would take a minute: a
/// timeout on each read (1 s, four times the gap) would never fire; the
/// step's timeout must bound the whole reply.
#[tokio::test]
async fn a_reply_one_octet_at_a_time_is_bounded_by_the_step_timeout() {
    const GAP: Duration = Duration::from_millis(250);
    let slow = |code: &str| {
        let mut s = format!("{code}-");
        s.push_str(&"slow ".repeat(48));
        s.push_str(&format!("\r\n{code} ok\r\n"));
        s.into_bytes()
    };
    // The greeting.
    let g = slow("220");
    let p = peer(move |r, mut w| async move {
        dribble(&mut w, &g, GAP).await;
        hold(r).await;
    })
    .await;
    let a = temporary(
        p,
        b"x\r\n",
        &Timeouts {
            greeting: STEP,
            ..patient()
        },
    )
    .await;
    unreachable_with(&a, "no greeting (timeout)");

    // The EHLO reply.
    let e = slow("250");
    let p = peer(move |mut r, mut w| async move {
        let _ = w.write_all(b"220 peer.test\r\n").await;
        if command(&mut r).await.is_some() {
            dribble(&mut w, &e, GAP).await;
        }
        hold(r).await;
    })
    .await;
    let a = temporary(
        p,
        b"x\r\n",
        &Timeouts {
            mail: STEP,
            ..patient()
        },
    )
    .await;
    unreachable_with(&a, "EHLO: ");

    // The reply to MAIL.
    let m = slow("250");
    let p = peer(move |mut r, mut w| async move {
        let _ = w.write_all(b"220 peer.test\r\n").await;
        if command(&mut r).await.is_some()
            && w.write_all(b"250 peer.test\r\n").await.is_ok()
            && command(&mut r).await.is_some()
        {
            dribble(&mut w, &m, GAP).await;
        }
        hold(r).await;
    })
    .await;
    let a = temporary(
        p,
        b"x\r\n",
        &Timeouts {
            mail: STEP,
            ..patient()
        },
    )
    .await;
    assert_eq!(a, Attempt::Deferred("MAIL: timeout".into()));

    // The reply after the dot.
    let d = slow("250");
    let p = peer(move |mut r, mut w| async move {
        if !up_to_data(&mut r, &mut w).await {
            return;
        }
        while let Some(line) = command(&mut r).await {
            if line == ".\r\n" {
                dribble(&mut w, &d, GAP).await;
                break;
            }
        }
        hold(r).await;
    })
    .await;
    let a = temporary(
        p,
        b"x\r\n",
        &Timeouts {
            data_end: STEP,
            ..patient()
        },
    )
    .await;
    assert_eq!(a, Attempt::Deferred("end of data: timeout".into()));
}

/// Endless replies (10 MB, then silence) must be cut off at a bounded size
/// rather than buffered until the timeout (60 s here, past `HANG`: only
/// the cut-off can end the attempt in time).
#[tokio::test]
async fn an_endless_reply_is_cut_off() {
    const TEN_MB: usize = 10 * 1024 * 1024;
    let long = patient();
    // One endless line, empty continuation lines (which mail-send's parser
    // buffers without its own limit), long continuation lines.
    let floods: [(&[u8], &[u8]); 3] = [
        (b"220 ", b"x"),
        (b"220-", b"220-\r\n"),
        (b"220-", b"220-more text\r\n"),
    ];
    for (head, unit) in floods {
        let p = peer(move |r, mut w| async move {
            if w.write_all(head).await.is_ok() {
                flood(r, &mut w, unit, TEN_MB).await;
            }
        })
        .await;
        let a = temporary(p, b"x\r\n", &long).await;
        unreachable_with(&a, "greeting: ");
    }
    // An endless EHLO reply.
    for unit in [&b"250-\r\n"[..], b"250-X-CAPABILITY\r\n"] {
        let p = peer(move |mut r, mut w| async move {
            let _ = w.write_all(b"220 peer.test\r\n").await;
            if command(&mut r).await.is_some() {
                flood(r, &mut w, unit, TEN_MB).await;
            }
        })
        .await;
        let a = temporary(p, b"x\r\n", &long).await;
        unreachable_with(&a, "EHLO: ");
    }
    // An endless reply to MAIL, and after the dot.
    for unit in [&b"250-\r\n"[..], b"250-ok\r\n", b"4"] {
        let p = peer(move |mut r, mut w| async move {
            let _ = w.write_all(b"220 peer.test\r\n").await;
            if command(&mut r).await.is_some()
                && w.write_all(b"250 peer.test\r\n").await.is_ok()
                && command(&mut r).await.is_some()
                && w.write_all(b"250-").await.is_ok()
            {
                flood(r, &mut w, unit, TEN_MB).await;
            }
        })
        .await;
        let a = temporary(p, b"x\r\n", &long).await;
        deferred_with(&a, "MAIL: ");

        let p = peer(move |mut r, mut w| async move {
            if !up_to_data(&mut r, &mut w).await {
                return;
            }
            while let Some(line) = command(&mut r).await {
                if line == ".\r\n" {
                    if w.write_all(b"250-").await.is_ok() {
                        flood(r, &mut w, unit, TEN_MB).await;
                    }
                    return;
                }
            }
        })
        .await;
        let a = temporary(p, b"x\r\n", &long).await;
        deferred_with(&a, "end of data: ");
    }
}

#[tokio::test]
async fn a_connection_dropped_mid_data_defers() {
    // A message larger than the socket buffers, so the client is still
    // writing when the peer goes.
    let big: Vec<u8> =
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n".repeat(512 * 1024);
    // Gone after reading 64 KiB of the data.
    let p = peer(|mut r, mut w| async move {
        if up_to_data(&mut r, &mut w).await {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = r.read_exact(&mut buf).await;
        }
    })
    .await;
    let a = temporary(p, &big, &patient()).await;
    deferred_with(&a, "data: ");
    // Gone right after the 354, the message large or small.
    for message in [&big[..], b"x\r\n"] {
        let p = peer(|mut r, mut w| async move {
            let _ = up_to_data(&mut r, &mut w).await;
        })
        .await;
        let a = temporary(p, message, &patient()).await;
        deferred_with(&a, "data: ");
    }
    // Reads everything, then goes without a reply.
    let p = peer(|mut r, mut w| async move {
        if up_to_data(&mut r, &mut w).await {
            while let Some(line) = command(&mut r).await {
                if line == ".\r\n" {
                    return;
                }
            }
        }
    })
    .await;
    let a = temporary(p, b"x\r\n", &patient()).await;
    deferred_with(&a, "end of data: ");
}

#[tokio::test]
async fn a_peer_that_stops_reading_the_data_defers() {
    // Never reads past the 354: the client's writes block once the socket
    // buffers are full (32 MiB is more than loopback buffers hold), and the
    // data-block timeout ends it.
    let big = vec![b'x'; 32 * 1024 * 1024];
    let p = peer(|mut r, mut w| async move {
        if up_to_data(&mut r, &mut w).await {
            // Unread data hides the client's FIN, so notice the close by
            // writing: a write fails once the client has closed its socket.
            // (The client reads nothing during the data; the spaces go
            // unread.)
            while w.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await;
    let a = temporary(
        p,
        &big,
        &Timeouts {
            data_block: STEP,
            ..patient()
        },
    )
    .await;
    assert_eq!(a, Attempt::Deferred("data: write timeout".into()));
}

#[tokio::test]
async fn no_reply_after_the_dot_defers_after_the_timeout() {
    let p = peer(|mut r, mut w| async move {
        if up_to_data(&mut r, &mut w).await {
            while let Some(line) = command(&mut r).await {
                if line == ".\r\n" {
                    break;
                }
            }
        }
        hold(r).await;
    })
    .await;
    let a = temporary(
        p,
        b"Subject: hi\r\n\r\nhello\r\n",
        &Timeouts {
            data_end: STEP,
            ..patient()
        },
    )
    .await;
    assert_eq!(a, Attempt::Deferred("end of data: timeout".into()));
}

/// The control: a well-behaved next hop (aiosmtpd), in plain text and over
/// STARTTLS, still gets the message, byte for byte, through the cut-off
/// stream (`MAX_REPLY_OCTETS` counts each reply, not the connection).
#[tokio::test]
async fn a_good_peer_still_gets_the_message() {
    use posthorn_test_support::{SmtpSink, free_port};
    let message = b"Subject: hi\r\n\r\nhello\r\n.leading dot\r\n".repeat(4096);
    assert!(message.len() > 2 * posthorn_delivery::client::MAX_REPLY_OCTETS);
    for tls in [false, true] {
        let port = free_port();
        let sink = tokio::task::spawn_blocking(move || {
            if tls {
                SmtpSink::start_tls("127.0.0.1", port, "")
            } else {
                SmtpSink::start("127.0.0.1", port, "")
            }
        })
        .await
        .unwrap();
        let addr = SocketAddr::new(sink.ip(), port);
        let a = attempt(addr, "sink.test", &job(&message), &patient(), None).await;
        assert!(matches!(a, Attempt::Delivered(..)), "tls {tls}: {a:?}");
        assert_eq!(sink.messages(), std::slice::from_ref(&message), "tls {tls}");
        let envelope = sink.envelope(1);
        assert!(envelope.contains(&format!("\"tls\": {tls}")), "{envelope}");
    }
}
