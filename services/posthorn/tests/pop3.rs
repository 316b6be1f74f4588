//! POP3 end to end through the real `posthorn` binary, on both backend sets:
//! mail delivered over SMTP is downloaded with real clients (Python poplib
//! over STLS, fetchmail) and deleted; the maildrop lock holds across access
//! processes.

mod common;

use common::*;

/// Send one message per subject to alice over SMTP (Python smtplib).
const SMTPLIB_SEND: &str = r#"
import smtplib, sys
port, subjects = int(sys.argv[1]), sys.argv[2:]
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    s.ehlo("client.example.org")
    for subj in subjects:
        msg = ("From: Sender <sender@example.org>\r\nTo: alice@example.test\r\n"
               "Subject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\n"
               "Hello,\r\n.a line that starts with a dot\r\n.\r\n..\r\nbye %s\r\n") % (subj, subj, subj)
        refused = s.sendmail("sender@example.org", ["alice@example.test"], msg.encode())
        assert not refused, refused
print("ok")
"#;

/// Download everything over STLS, check sizes, delete, quit; print the
/// messages (as retrieved, CRLF-joined) as JSON.
const POPLIB_FETCH_ALL: &str = r#"
import poplib, ssl, sys, json
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
p = poplib.POP3("127.0.0.1", port, timeout=30)
caps = p.capa()
assert "STLS" in caps and "USER" not in caps, caps
p.stls(ctx)
caps = p.capa()
assert "USER" in caps and "UIDL" in caps and "TOP" in caps, caps
p.user("alice@example.test")
p.pass_("alice-pw")
n, total = p.stat()
sizes = {int(l.split()[0]): int(l.split()[1]) for l in p.list()[1]}
uidls = [l.split()[1].decode() for l in p.uidl()[1]]
assert len(set(uidls)) == n, uidls
out = []
for i in range(1, n + 1):
    resp, lines, octets = p.retr(i)
    assert octets == sizes[i], (i, octets, sizes[i])
    top = p.top(i, 0)[1]
    assert top == lines[:len(top)] and top[-1] == b"", top
    out.append((b"\r\n".join(lines) + b"\r\n").decode())
    p.dele(i)
assert sum(sizes.values()) == total
p.quit()
print(json.dumps(out))
"#;

/// Log in over STLS and print STAT.
const POPLIB_STAT: &str = r#"
import poplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
p = poplib.POP3("127.0.0.1", port, timeout=30)
p.stls(ctx)
p.user("alice@example.test")
p.pass_("alice-pw")
print(p.stat())
p.quit()
"#;

/// Hold a session on port A; a login on port B must be refused with
/// [IN-USE]; after QUIT on A a login on B works.
const POPLIB_IN_USE: &str = r#"
import poplib, ssl, sys
a, b = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def login(port):
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    p.stls(ctx)
    p.user("alice@example.test")
    p.pass_("alice-pw")
    return p
first = login(a)
try:
    login(b)
    raise SystemExit("second login was accepted")
except poplib.error_proto as e:
    assert e.args[0] == b"-ERR [IN-USE] Maildrop already locked", e
first.stat()
first.quit()
again = login(b)
print(again.stat())
again.quit()
"#;

fn deliver(sys: &System, subjects: &[&str]) -> Vec<(u32, u64)> {
    let port = sys.ports.smtp.to_string();
    let mut args = vec![port.as_str()];
    args.extend_from_slice(subjects);
    python(SMTPLIB_SEND, &args);
    sys.wait_messages("alice@example.test", subjects.len(), WAIT)
}

fn poplib_downloads_and_deletes(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    let subjects = ["first", "second", "third"];
    let msgs = deliver(&sys, &subjects);
    let stored: Vec<String> = msgs
        .iter()
        .map(|(uid, _)| {
            String::from_utf8_lossy(&sys.fetch("alice@example.test", *uid)).into_owned()
        })
        .collect();
    let json = python(POPLIB_FETCH_ALL, &[&sys.ports.pop3.to_string()]);
    let got: Vec<String> = parse_json_strings(&json);
    assert_eq!(got.len(), 3, "{json}");
    for (i, (got, stored)) in got.iter().zip(&stored).enumerate() {
        assert_eq!(got, stored, "message {}", i + 1);
        assert!(
            got.contains("\r\n\r\nHello,\r\n.a line that starts with a dot\r\n.\r\n..\r\nbye"),
            "{got}"
        );
        assert_eq!(got.len() as u64, msgs[i].1, "size");
    }
    // Messages sent one after another may be routed in parallel, so UID
    // order need not be sending order; each must be there exactly once.
    for subject in subjects {
        let n = got
            .iter()
            .filter(|m| m.contains(&format!("Subject: {subject}\r\n")))
            .count();
        assert_eq!(n, 1, "Subject: {subject}");
    }
    assert!(sys.messages("alice@example.test").is_empty());
    let stat = python(POPLIB_STAT, &[&sys.ports.pop3.to_string()]);
    assert_eq!(stat.trim(), "(0, 0)");
}

/// The JSON list of strings printed by Python's `json.dumps` (ASCII only).
fn parse_json_strings(s: &str) -> Vec<String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap();
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut cur = String::new();
        loop {
            match chars.next().unwrap() {
                '"' => break,
                '\\' => match chars.next().unwrap() {
                    'r' => cur.push('\r'),
                    'n' => cur.push('\n'),
                    't' => cur.push('\t'),
                    'u' => {
                        let hex: String = (0..4).map(|_| chars.next().unwrap()).collect();
                        cur.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                    }
                    other => cur.push(other),
                },
                c => cur.push(c),
            }
        }
        out.push(cur);
    }
    out
}

fn fetchmail_downloads_and_empties(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    deliver(&sys, &["fm-one", "fm-two"]);
    let home = sys.dir.path().join("fetchmail");
    std::fs::create_dir_all(&home).unwrap();
    let mbox = home.join("delivered.mbox");
    let rc = home.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no bouncemail\n\
             poll 127.0.0.1 protocol pop3 port {} timeout 30\n\
             \tuser \"alice@example.test\" password \"alice-pw\"\n\
             \tsslproto 'tls1.2+' no sslcertck\n\
             \tmda \"cat >> {}\"\n",
            sys.ports.pop3,
            mbox.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = std::process::Command::new("fetchmail")
        .args([
            "-f",
            rc.to_str().unwrap(),
            "--nokeep",
            "--all",
            "-v",
            "--nosyslog",
        ])
        .args(["--idfile", home.join("ids").to_str().unwrap()])
        .args(["--pidfile", home.join("pid").to_str().unwrap()])
        .env("HOME", &home)
        .env("FETCHMAILHOME", &home)
        .output()
        .expect("fetchmail is not installed (apt-get install fetchmail)");
    assert_eq!(
        o.status.code(),
        Some(0),
        "fetchmail: {}\n{}",
        out(&o),
        sys.logs()
    );
    let got = std::fs::read_to_string(&mbox).unwrap();
    for subj in ["fm-one", "fm-two"] {
        assert!(got.contains(&format!("Subject: {subj}")), "{got}");
    }
    assert!(
        got.contains("Hello,\r\n.a line that starts with a dot\r\n")
            || got.contains("Hello,\n.a line that starts with a dot\n"),
        "{got}"
    );
    assert!(sys.messages("alice@example.test").is_empty());
    let stat = python(POPLIB_STAT, &[&sys.ports.pop3.to_string()]);
    assert_eq!(stat.trim(), "(0, 0)");
}

/// Embedded: two sessions on one process. Cluster: on two access processes
/// sharing Redis, so the lock must live in the store.
fn second_login_is_in_use(backend: Backend) {
    let mut sys = System::start(backend, "");
    sys.standard_directory();
    deliver(&sys, &["locked"]);
    let other = match backend {
        Backend::Embedded => None,
        Backend::Cluster => Some(second_access(&mut sys)),
    };
    let port_b = other.as_ref().map(|(p, _)| *p).unwrap_or(sys.ports.pop3);
    let stat = python(
        POPLIB_IN_USE,
        &[&sys.ports.pop3.to_string(), &port_b.to_string()],
    );
    assert!(stat.trim().starts_with("(1, "), "{stat}");
}

/// Start another `posthorn run access` on the cluster's backends with its own
/// listeners; returns (its POP3 port, the process).
fn second_access(sys: &mut System) -> (u16, Proc) {
    use posthorn_test_support::free_port;
    let (r, n, s) = (
        sys.redis.as_ref().unwrap(),
        sys.nats.as_ref().unwrap(),
        sys.s3.as_ref().unwrap(),
    );
    let (pop3, http) = (free_port(), free_port());
    let data = sys.dir.path().join("access2-data");
    let env: Vec<(&str, String)> = vec![
        ("RUST_LOG", "info".into()),
        ("POSTHORN_STORAGE__BACKEND", "cluster".into()),
        ("POSTHORN_REDIS__URL", r.url()),
        ("POSTHORN_NATS__URL", n.url()),
        ("POSTHORN_S3__ENDPOINT", s.endpoint()),
        (
            "POSTHORN_S3__BUCKET",
            posthorn_test_support::S3_BUCKET.into(),
        ),
        (
            "POSTHORN_S3__ACCESS_KEY_ID",
            posthorn_test_support::S3_ACCESS_KEY.into(),
        ),
        (
            "POSTHORN_S3__SECRET_ACCESS_KEY",
            posthorn_test_support::S3_SECRET_KEY.into(),
        ),
        ("POSTHORN_S3__ALLOW_HTTP", "true".into()),
        ("POSTHORN_SERVER__DATA_DIR", data.display().to_string()),
        ("POSTHORN_ACCESS__POP3_LISTEN", format!("127.0.0.1:{pop3}")),
        (
            "POSTHORN_ACCESS__POP3S_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "POSTHORN_ACCESS__IMAP_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "POSTHORN_ACCESS__IMAPS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("POSTHORN_ACCESS__HTTP_LISTEN", format!("127.0.0.1:{http}")),
    ];
    let cfg = sys.config_path();
    let log = sys.dir.path().join("access2.log");
    let mut p = Proc::spawn(
        &["run", "access", "--config", cfg.to_str().unwrap()],
        &env,
        log.clone(),
    );
    wait_ready(&[("access2", http)], READY_WAIT, &mut p.child, &log);
    (pop3, p)
}

macro_rules! both {
    ($($name:ident),*) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Backend::Embedded) } )*
        }
        mod cluster {
            $( #[test] fn $name() { super::$name(super::Backend::Cluster) } )*
        }
    };
}

both!(
    poplib_downloads_and_deletes,
    fetchmail_downloads_and_empties,
    second_login_is_in_use
);
