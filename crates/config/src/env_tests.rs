use super::*;

/// The real-environment path (`Config::load`), with figment's jail so no
/// process-wide variable leaks into other tests.
#[test]
#[allow(clippy::result_large_err)]
fn process_environment_overrides() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("POSTHORN_STORAGE__BACKEND", "cluster");
        jail.set_env("POSTHORN_SMTP__MAX_RECIPIENTS", "7");
        jail.set_env("POSTHORN_TEST_REDIS_SERVER", "/usr/bin/redis-server");
        jail.set_env(
            "POSTHORN_RESOLVER__NAMESERVERS",
            "[\"127.0.0.1:5353\", \"[::1]:53\"]",
        );
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.storage.backend, Backend::Cluster);
        assert_eq!(c.smtp.max_recipients, 7);
        assert_eq!(c.resolver.nameservers, ["127.0.0.1:5353", "[::1]:53"]);
        Ok(())
    });
}

/// `delivery.transports` from a real environment variable (an inline table).
#[test]
#[allow(clippy::result_large_err)]
fn transports_from_the_process_environment() {
    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "POSTHORN_DELIVERY__TRANSPORTS",
            "{\"example.com\"=\"[relay.example]:587\", \".example.org\"=\"mx.example.org\"}",
        );
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.delivery.transports["example.com"], "[relay.example]:587");
        assert_eq!(c.delivery.transports[".example.org"], "mx.example.org");
        Ok(())
    });
}
