//! `posthorn serve` on the embedded backends, administered with the CLI.

mod common;

use common::*;

fn start_serve(dir: &std::path::Path, ports: &Ports) -> Proc {
    let cfg = dir.join("posthorn.toml");
    std::fs::write(&cfg, ports.toml()).unwrap();
    let data = dir.join("data");
    Proc::spawn(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        dir.join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )),
    )
}

#[test]
fn serve_becomes_ready_and_the_directory_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let mut p = start_serve(dir.path(), &ports);
    wait_ready(&ports.tiers(), READY_WAIT, &mut p.child, &p.log);
    let log = p.log_text();
    for what in ["gRPC (directory, admin) listening", "HTTP side port"] {
        assert!(log.contains(what), "log lacks {what:?}:\n{log}");
    }
    assert!(
        dir.path().join("data/tls/cert.pem").exists(),
        "no self-signed certificate generated"
    );
    assert_eq!(http_get(ports.http[2], "/healthz").unwrap().0, 200);
    let (code, metrics) = http_get(ports.http[2], "/metrics").unwrap();
    assert_eq!(code, 200, "{metrics}");

    let url = ports.router_url();
    let o = admin(&url, &["domain", "add", "example.test"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = admin(&url, &["domain", "add", "example.test"]);
    assert_eq!(o.status.code(), Some(65), "duplicate domain: {}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        out(&o)
    );

    let o = admin(
        &url,
        &[
            "user",
            "add",
            "alice@example.test",
            "--password",
            "correct horse",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = admin_stdin(
        &url,
        &["user", "add", "bob@example.test", "--password-stdin"],
        "battery staple\n",
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = admin(
        &url,
        &["user", "add", "alice@example.test", "--password", "x"],
    );
    assert_eq!(o.status.code(), Some(65), "duplicate user: {}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        out(&o)
    );
    let o = admin(
        &url,
        &["user", "add", "carol@nowhere.test", "--password", "x"],
    );
    assert_eq!(o.status.code(), Some(65), "unknown domain: {}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a local domain"),
        "{}",
        out(&o)
    );
    let o = admin(&url, &["user", "add", "not-an-address", "--password", "x"]);
    assert_eq!(o.status.code(), Some(64), "bad address: {}", out(&o));
    let o = admin(&url, &["user", "add", "dave@example.test"]);
    assert_eq!(o.status.code(), Some(64), "no password: {}", out(&o));

    let o = admin(
        &url,
        &[
            "alias",
            "add",
            "team@example.test",
            "alice@example.test",
            "bob@example.test",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = admin(&url, &["alias", "add", "pipe@example.test", "|/bin/sh"]);
    assert_eq!(o.status.code(), Some(64), "program alias: {}", out(&o));
    let o = admin(
        &url,
        &[
            "quota",
            "set",
            "alice@example.test",
            "--bytes",
            "1000000",
            "--messages",
            "100",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = admin(
        &url,
        &[
            "user",
            "passwd",
            "alice@example.test",
            "--password",
            "new one",
        ],
    );
    assert!(o.status.success(), "{}", out(&o));

    // SIGKILL, restart on the same data directory: everything is still there.
    p.kill();
    let mut p = start_serve(dir.path(), &ports);
    wait_ready(&ports.tiers(), READY_WAIT, &mut p.child, &p.log);
    let o = admin(&url, &["user", "list"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "alice@example.test\nbob@example.test\n"
    );
    let o = admin(&url, &["domain", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "example.test\n",
        "{}",
        out(&o)
    );
    let o = admin(&url, &["alias", "list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("team@example.test: alice@example.test, bob@example.test"),
        "{}",
        out(&o)
    );
    let o = admin(&url, &["user", "show", "alice@example.test"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("messages: 0 of 100"),
        "{}",
        out(&o)
    );

    let o = admin(&url, &["user", "remove", "bob@example.test"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = admin(&url, &["user", "remove", "bob@example.test"]);
    assert_eq!(o.status.code(), Some(65), "{}", out(&o));

    // SIGTERM: a clean, prompt exit.
    let st = p.terminate();
    assert!(st.success(), "exit status {st}; log:\n{}", p.log_text());
}

#[test]
fn admin_without_a_server_says_where_it_looked() {
    let url = format!("http://127.0.0.1:{}", posthorn_test_support::free_port());
    let o = admin(&url, &["domain", "list"]);
    assert_eq!(o.status.code(), Some(69), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&url),
        "{}",
        out(&o)
    );
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[smtp]\nmax_recipients = 100\nlisten = \"nowhere\"\n").unwrap();
    let o = std::process::Command::new(bin())
        .args(["config", "check", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("smtp.listen"),
        "{}",
        out(&o)
    );

    std::fs::write(&f, "[smtpp]\nlisten = \"127.0.0.1:25\"\n").unwrap();
    let o = std::process::Command::new(bin())
        .args(["config", "check", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("smtpp"),
        "{}",
        out(&o)
    );

    std::fs::write(&f, "[smtp]\nmax_recipients = 100\n").unwrap();
    let o = std::process::Command::new(bin())
        .args(["config", "check", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
}
