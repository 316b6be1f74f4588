//! The shared conformance suite against both backends.

use std::sync::Arc;

use posthorn_mailbox_store::MetaStore;
use posthorn_mailbox_store::conformance::run_all;
use posthorn_mailbox_store::embedded::EmbeddedStore;
use posthorn_mailbox_store::redis_store::RedisStore;
use posthorn_test_support::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("meta.redb")).expect("open redb");
    run_all(Arc::new(store) as Arc<dyn MetaStore>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_reopen_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.redb");
    {
        let store = EmbeddedStore::open(&path).expect("open redb");
        store.add_domain("reopen.test").await.unwrap();
        store.add_account("a@reopen.test", "h").await.unwrap();
    }
    let store = EmbeddedStore::open(&path).expect("reopen redb");
    assert!(store.get_account("a@reopen.test").await.unwrap().is_some());
    assert_eq!(
        store.list_mailboxes("a@reopen.test").await.unwrap().len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_conformance() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url())
        .await
        .expect("connect redis");
    run_all(Arc::new(store) as Arc<dyn MetaStore>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_is_transient() {
    let port = posthorn_test_support::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    match RedisStore::connect(&url).await {
        Err(e) => {
            assert!(e.is_transient(), "{e:?}");
            assert!(e.to_string().contains(&port.to_string()), "{e}");
        }
        Ok(_) => panic!("connected to nothing"),
    }
}

/// A one-node Redis Cluster (all 16384 slots on one node): Cluster mode
/// still refuses cross-slot multi-key commands and scripts, so this checks
/// the hash-tag keyspace and the Cluster connection path.
struct ClusterNode {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cluster_node() -> ClusterNode {
    let program = std::env::var("POSTHORN_TEST_REDIS_SERVER")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "redis-server".into());
    let port = posthorn_test_support::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let child = std::process::Command::new(&program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--dir", &dir.path().display().to_string()])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (apt-get install redis-server): {e}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis cluster node did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ClusterNode {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_conformance() {
    let node = start_cluster_node();
    let url = format!("redis://127.0.0.1:{}/", node.port);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut c)
        .await
        .expect("CLUSTER ADDSLOTSRANGE");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut c)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cluster not ok: {info}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let store = RedisStore::connect_cluster(&[url])
        .await
        .expect("connect cluster");
    run_all(Arc::new(store) as Arc<dyn MetaStore>).await;
}
