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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_conformance() {
    // A one-node Redis Cluster (all 16384 slots on one node), handed over
    // when `CLUSTER INFO` says `cluster_state:ok`: Cluster mode still
    // refuses cross-slot multi-key commands and scripts, so this checks the
    // hash-tag keyspace and the Cluster connection path.
    let node = RedisServer::start_cluster();
    let url = node.url();
    let store = RedisStore::connect_cluster(&[url])
        .await
        .expect("connect cluster");
    run_all(Arc::new(store) as Arc<dyn MetaStore>).await;
}
