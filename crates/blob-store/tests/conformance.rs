//! The same blob-store checks against local disk and a real S3 server.

use std::time::Duration;

use bytes::Bytes;
use posthorn_blob_store::{BlobStore, Error, key_for};

async fn conformance(store: &BlobStore) {
    store.ping().await.expect("ping");
    let body = Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n");
    let key = store.put(body.clone()).await.expect("put");
    assert_eq!(key, key_for(&body));
    // Idempotent: a retried PUT gives the same key and content.
    assert_eq!(store.put(body.clone()).await.unwrap(), key);
    assert_eq!(store.get(&key).await.unwrap(), body);
    assert_eq!(
        store.get_range(&key, 0..7).await.unwrap(),
        Bytes::from_static(b"Subject")
    );
    assert!(store.exists(&key).await.unwrap());

    let missing = key_for(b"never stored");
    assert!(matches!(store.get(&missing).await, Err(Error::NotFound(_))));
    assert!(!store.exists(&missing).await.unwrap());
    assert!(matches!(
        store.get("../../etc/passwd").await,
        Err(Error::InvalidKey(_))
    ));

    // GC: a referenced blob stays, an unreferenced one goes (grace 0).
    let other = store.put(Bytes::from_static(b"orphan")).await.unwrap();
    let keep = key.clone();
    let deleted = store
        .gc(Duration::ZERO, |k| {
            let keep = keep.clone();
            async move { Ok::<_, ()>(k == keep) }
        })
        .await
        .unwrap();
    assert_eq!(deleted, vec![other.clone()]);
    assert!(!store.exists(&other).await.unwrap());
    assert!(store.exists(&key).await.unwrap());
    // A long grace keeps even unreferenced blobs.
    let deleted = store
        .gc(Duration::from_secs(3600), |_| async { Ok::<_, ()>(false) })
        .await
        .unwrap();
    assert!(deleted.is_empty());
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
}

#[tokio::test]
async fn local_disk_conformance() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&BlobStore::local(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn memory_conformance() {
    conformance(&BlobStore::memory()).await;
}

fn s3_config(endpoint: String) -> posthorn_config::S3Config {
    posthorn_config::S3Config {
        endpoint,
        bucket: posthorn_test_support::S3_BUCKET.into(),
        region: "us-east-1".into(),
        access_key_id: posthorn_test_support::S3_ACCESS_KEY.into(),
        secret_access_key: posthorn_test_support::S3_SECRET_KEY.into(),
        secret_access_key_file: String::new(),
        allow_http: true,
        path_style: true,
        sign_payload: false,
    }
}

#[tokio::test]
async fn s3_conformance() {
    let s3 = posthorn_test_support::S3Server::start();
    conformance(&BlobStore::s3(&s3_config(s3.endpoint())).unwrap()).await;
}

#[tokio::test]
async fn s3_down_is_transient_and_names_endpoint() {
    let mut s3 = posthorn_test_support::S3Server::start();
    let store = BlobStore::s3(&s3_config(s3.endpoint())).unwrap();
    s3.0.kill();
    let err = store.put(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains(&s3.endpoint()), "{err}");
}
