use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn file_and_env_override() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(
        &f,
        "[smtp]\nmax_recipients = 50\n[redis]\nurl = \"redis://a:1/\"\n",
    )
    .unwrap();
    let c = Config::load_with_env(
        Some(&f),
        &[
            ("POSTHORN_REDIS__URL", "redis://b:2/"),
            ("POSTHORN_STORAGE__BACKEND", "cluster"),
            ("POSTHORN_TEST_IGNORED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.smtp.max_recipients, 50);
    assert_eq!(c.redis.url, "redis://b:2/");
    assert_eq!(c.storage.backend, Backend::Cluster);
}

#[test]
fn blob_sync_choices() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    assert_eq!(Config::default().storage.blob_sync, BlobSync::Syncfs);
    std::fs::write(&f, "[storage]\nblob_sync = \"fsync\"\n").unwrap();
    assert_eq!(
        Config::load_file_only(&f).unwrap().storage.blob_sync,
        BlobSync::Fsync
    );
    std::fs::write(&f, "[storage]\nblob_sync = \"never\"\n").unwrap();
    let err = Config::load_file_only(&f).unwrap_err().to_string();
    assert!(err.contains("blob_sync"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, "[smtp]\nmax_recipientz = 50\n").unwrap();
    let err = Config::load_file_only(&f).unwrap_err().to_string();
    assert!(err.contains("max_recipientz"), "{err}");
    assert!(err.contains("smtp"), "{err}");
}

#[test]
fn wrong_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, "[smtp]\nmax_recipients = \"many\"\n").unwrap();
    let err = Config::load_file_only(&f).unwrap_err().to_string();
    assert!(err.contains("smtp.max_recipients"), "{err}");
}

#[test]
fn bad_listen_address_is_named() {
    let c = Config::load_with_env(None, &[("POSTHORN_SMTP__LISTEN", "nonsense")]);
    let err = c.unwrap_err().to_string();
    assert!(err.contains("smtp.listen"), "{err}");
}

#[test]
fn docs_list_every_key() {
    let doc = include_str!("../../../docs/configuration.md");
    let toml = Config::default().to_toml();
    let mut section = String::new();
    let mut checked = 0;
    for line in toml.lines() {
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_end_matches(']').to_string();
        } else if let Some((k, _)) = line.split_once(" = ") {
            let needle = format!("`{section}.{k}`");
            assert!(
                doc.contains(&needle),
                "docs/configuration.md does not list {needle}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} keys found");
}

#[test]
fn delivery_keys_from_env_and_validation() {
    let c = Config::load_with_env(
        None,
        &[
            ("POSTHORN_DELIVERY__REMOTE_PORT", "2525"),
            ("POSTHORN_DELIVERY__CONCURRENCY", "3"),
            ("POSTHORN_DELIVERY__RETRY_MIN_SECS", "1"),
            ("POSTHORN_DELIVERY__RETRY_MAX_SECS", "4"),
            ("POSTHORN_DELIVERY__TIMEOUT_DATA_END_SECS", "7"),
            ("POSTHORN_DELIVERY__PER_DOMAIN_CONCURRENCY", "2"),
            ("POSTHORN_DELIVERY__DEAD_DESTINATION_SECS", "0"),
            ("POSTHORN_ROUTER__QUEUE_METRICS_SECS", "0"),
        ],
    )
    .unwrap();
    assert_eq!(c.delivery.per_domain_concurrency, 2);
    assert_eq!(c.delivery.dead_destination_secs, 0);
    assert_eq!(c.router.queue_metrics_secs, 0);
    assert_eq!(c.delivery.remote_port, 2525);
    assert_eq!(c.delivery.concurrency, 3);
    assert_eq!(
        (c.delivery.retry_min_secs, c.delivery.retry_max_secs),
        (1, 4)
    );
    assert_eq!(c.delivery.timeout_data_end_secs, 7);
    assert_eq!(Config::default().delivery.timeout_greeting_secs, 300);
    let err = Config::load_with_env(None, &[("POSTHORN_DELIVERY__TIMEOUT_RCPT_SECS", "0")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("delivery.timeout_rcpt_secs"), "{err}");
    let err = Config::load_with_env(
        None,
        &[
            ("POSTHORN_DELIVERY__RETRY_MIN_SECS", "100"),
            ("POSTHORN_DELIVERY__RETRY_MAX_SECS", "10"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("delivery.retry_min_secs"), "{err}");
}

#[test]
fn resolver_keys_from_file_and_env() {
    let c = Config::load_with_env(
        None,
        &[
            (
                "POSTHORN_RESOLVER__NAMESERVERS",
                "[\"127.0.0.1:5353\", \"[::1]:53\", \"10.0.0.1\"]",
            ),
            ("POSTHORN_RESOLVER__TIMEOUT_SECS", "2"),
            ("POSTHORN_RESOLVER__ATTEMPTS", "3"),
            ("POSTHORN_RESOLVER__CACHE_SIZE", "50"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.resolver.nameservers,
        ["127.0.0.1:5353", "[::1]:53", "10.0.0.1"]
    );
    assert_eq!(
        parse_nameserver("10.0.0.1"),
        Some("10.0.0.1:53".parse().unwrap())
    );
    assert_eq!(
        parse_nameserver("[::1]:53"),
        Some("[::1]:53".parse().unwrap())
    );
    assert_eq!(
        (
            c.resolver.timeout_secs,
            c.resolver.attempts,
            c.resolver.cache_size
        ),
        (2, 3, 50)
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(&f, "[resolver]\nnameservers = [\"dns.example:53\"]\n").unwrap();
    let err = Config::load_file_only(&f).unwrap_err().to_string();
    assert!(err.contains("resolver.nameservers"), "{err}");
    let err = Config::load_with_env(None, &[("POSTHORN_RESOLVER__ATTEMPTS", "0")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("resolver.attempts"), "{err}");
}

#[test]
fn next_hop_forms() {
    let h = |host: &str, port: Option<u16>, mx: bool| NextHop {
        host: host.into(),
        port,
        mx,
    };
    assert_eq!(
        parse_next_hop("smtp.Provider.example:587"),
        Some(h("smtp.provider.example", Some(587), true))
    );
    assert_eq!(
        parse_next_hop("[smtp.provider.example]:587"),
        Some(h("smtp.provider.example", Some(587), false))
    );
    assert_eq!(
        parse_next_hop("[relay.example.]"),
        Some(h("relay.example", None, false))
    );
    assert_eq!(
        parse_next_hop("relay.example"),
        Some(h("relay.example", None, true))
    );
    // An address is never an MX lookup, bracketed or not.
    assert_eq!(
        parse_next_hop("192.0.2.1:25"),
        Some(h("192.0.2.1", Some(25), false))
    );
    assert_eq!(
        parse_next_hop("[ipv6:2001:db8::1]:587"),
        Some(h("2001:db8::1", Some(587), false))
    );
    assert_eq!(
        parse_next_hop("[2001:db8::1]"),
        Some(h("2001:db8::1", None, false))
    );
    assert_eq!(
        parse_next_hop("[smtp.provider.example]:587")
            .unwrap()
            .spec(),
        "[smtp.provider.example]:587"
    );
    assert_eq!(
        parse_next_hop("relay.example").unwrap().spec(),
        "relay.example"
    );
    for bad in [
        "",
        "relay.example:",
        "relay.example:0",
        "relay.example:99999",
        "[relay.example",
        "[relay.example]587",
        "a b.example",
        "user@relay.example",
        "relay..example",
    ] {
        assert_eq!(parse_next_hop(bad), None, "{bad:?}");
    }
}

#[test]
fn relayhost_and_transports_from_file_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.toml");
    std::fs::write(
        &f,
        "[delivery]\nrelayhost = \"[smtp.provider.example]:587\"\n\
         relay_auth_file = \"/etc/posthorn/relay_auth\"\n\
         [delivery.transports]\n\"example.com\" = \"mx.example.net:25\"\n\
         \".example.org\" = \"[10.0.0.5]:2525\"\n",
    )
    .unwrap();
    let c = Config::load_file_only(&f).unwrap();
    assert_eq!(c.delivery.relayhost, "[smtp.provider.example]:587");
    assert_eq!(c.delivery.relay_auth_file, "/etc/posthorn/relay_auth");
    assert!(!c.delivery.relay_auth_plaintext);
    assert_eq!(c.delivery.transports["example.com"], "mx.example.net:25");
    assert_eq!(c.delivery.transports[".example.org"], "[10.0.0.5]:2525");
    // From the environment: an inline table.
    let c = Config::load_with_env(
        None,
        &[
            ("POSTHORN_DELIVERY__RELAYHOST", "relay.example:2525"),
            ("POSTHORN_DELIVERY__RELAY_AUTH_PLAINTEXT", "true"),
            (
                "POSTHORN_DELIVERY__TRANSPORTS",
                "{\"example.com\"=\"[relay.example]:587\", \".example.org\"=\"mx.example.org\"}",
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.delivery.relayhost, "relay.example:2525");
    assert!(c.delivery.relay_auth_plaintext);
    assert_eq!(c.delivery.transports["example.com"], "[relay.example]:587");
    assert_eq!(c.delivery.transports[".example.org"], "mx.example.org");
    let err = Config::load_with_env(None, &[("POSTHORN_DELIVERY__RELAYHOST", "[x:25")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("delivery.relayhost"), "{err}");
    std::fs::write(
        &f,
        "[delivery.transports]\n\"example.com\" = \"bad host:25\"\n",
    )
    .unwrap();
    let err = Config::load_file_only(&f).unwrap_err().to_string();
    assert!(err.contains("delivery.transports.example.com"), "{err}");
}

#[test]
fn cidr() {
    let n = parse_cidr("10.0.0.0/8").unwrap();
    assert!(cidr_contains(n, "10.1.2.3".parse().unwrap()));
    assert!(!cidr_contains(n, "11.1.2.3".parse().unwrap()));
    assert!(cidr_contains(n, "::ffff:10.1.2.3".parse().unwrap()));
    assert!(parse_cidr("10.0.0.0/33").is_none());
    let h = parse_cidr("::1").unwrap();
    assert!(cidr_contains(h, "::1".parse().unwrap()));
}
