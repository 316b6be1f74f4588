//! Clients the system tests drive the binary with: a raw SMTP client for
//! exact reply checks and Python snippets (smtplib, imaplib, poplib).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use super::out;

/// A minimal SMTP client for exact reply checks.
pub struct Smtp {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Smtp {
    pub fn connect(port: u16) -> (Smtp, String) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut s = Smtp {
            stream,
            buf: Vec::new(),
        };
        let greeting = s.reply();
        (s, greeting)
    }

    pub fn from_stream(stream: TcpStream) -> Smtp {
        Smtp {
            stream,
            buf: Vec::new(),
        }
    }

    /// Like [`Smtp::cmd`], `None` on an I/O error or EOF.
    pub fn try_cmd(&mut self, line: &str) -> Option<String> {
        self.try_send(format!("{line}\r\n").as_bytes())?;
        self.try_reply()
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> Option<()> {
        self.stream.write_all(bytes).ok()
    }

    /// One reply, `None` on EOF/error before a complete reply.
    pub fn try_reply(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find_reply_end(&self.buf) {
                let r: Vec<u8> = self.buf.drain(..end).collect();
                return Some(String::from_utf8_lossy(&r).to_string());
            }
            let mut tmp = [0u8; 4096];
            match self.stream.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Read one (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        loop {
            if let Some(end) = find_reply_end(&self.buf) {
                let r: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8_lossy(&r).to_string();
            }
            let mut tmp = [0u8; 4096];
            let n = self.stream.read(&mut tmp).unwrap_or(0);
            if n == 0 {
                let rest = String::from_utf8_lossy(&self.buf).to_string();
                self.buf.clear();
                return rest;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Send a command line and return the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

fn find_reply_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
        let line = &buf[start..start + pos + 1];
        if line.len() >= 4 && line[3] == b' ' {
            return Some(start + pos + 1);
        }
        if line.len() < 4 {
            return Some(start + pos + 1);
        }
        start += pos + 1;
    }
    None
}

/// Run a Python snippet; panic with its output unless it exits 0.
pub fn python(script: &str, args: &[&str]) -> String {
    python_or(script, args, String::new)
}

/// Like [`python`], adding `context()` (say a system's logs) on failure.
pub fn python_or(script: &str, args: &[&str], context: impl FnOnce() -> String) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "python failed: {}\n{}",
        out(&o),
        context()
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}
