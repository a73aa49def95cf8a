//! The object store behaviour suite, run against a local directory and a real
//! S3-compatible server (`CAIRN_TEST_S3_ENDPOINT`, started by scripts/test).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use cairn_object_store::{LocalStore, ObjectStore, S3Config, S3Store, StoreError};

async fn round_trip_and_missing(store: Arc<dyn ObjectStore>) {
    store
        .put_if_absent("t/0/a.seg", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(store.get("t/0/a.seg").await.unwrap(), Bytes::from_static(b"hello"));
    assert!(matches!(store.get("t/0/missing").await, Err(StoreError::NotFound(_))));
    let empty = Bytes::new();
    store.put_if_absent("empty", empty.clone()).await.unwrap();
    assert_eq!(store.get("empty").await.unwrap(), empty);
}

async fn writes_are_create_only(store: Arc<dyn ObjectStore>) {
    store.put_if_absent("k", Bytes::from_static(b"first")).await.unwrap();
    let second = store.put_if_absent("k", Bytes::from_static(b"second")).await;
    assert!(matches!(second, Err(StoreError::AlreadyExists(_))), "{second:?}");
    assert_eq!(
        store.get("k").await.unwrap(),
        Bytes::from_static(b"first"),
        "the original is untouched"
    );
}

async fn concurrent_creates_have_one_winner(store: Arc<dyn ObjectStore>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put_if_absent("race", Bytes::from(format!("writer-{i}"))).await })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => winners += 1,
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners, 1);
    assert!(store.get("race").await.unwrap().starts_with(b"writer-"));
}

async fn ranges_are_clamped(store: Arc<dyn ObjectStore>) {
    store
        .put_if_absent("r", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(store.get_range("r", 2..5).await.unwrap(), Bytes::from_static(b"234"));
    assert_eq!(store.get_range("r", 8..100).await.unwrap(), Bytes::from_static(b"89"));
    assert_eq!(store.get_range("r", 20..30).await.unwrap(), Bytes::new());
    assert_eq!(store.get_range("r", 3..3).await.unwrap(), Bytes::new());
    assert!(matches!(
        store.get_range("nope", 0..3).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn list_filters_by_prefix_in_key_order(store: Arc<dyn ObjectStore>) {
    for key in ["t/1/b", "t/1/a", "t/10/a", "u/1/a", "t/1/sub/c"] {
        store.put_if_absent(key, Bytes::from(key.to_owned())).await.unwrap();
    }
    let keys: Vec<String> = store.list("t/1/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, vec!["t/1/a", "t/1/b", "t/1/sub/c"]);
    let listed = store.list("t/1").await.unwrap();
    assert_eq!(listed.len(), 4, "a prefix is a string prefix, not a directory");
    assert_eq!(listed.iter().find(|m| m.key == "t/1/a").unwrap().size, 5);
    assert!(store.list("zzz/").await.unwrap().is_empty());
}

async fn delete_is_idempotent_and_frees_the_key(store: Arc<dyn ObjectStore>) {
    store.put_if_absent("d", Bytes::from_static(b"x")).await.unwrap();
    store.delete("d").await.unwrap();
    store.delete("d").await.unwrap();
    assert!(matches!(store.get("d").await, Err(StoreError::NotFound(_))));
    store.put_if_absent("d", Bytes::from_static(b"y")).await.unwrap();
    assert_eq!(store.get("d").await.unwrap(), Bytes::from_static(b"y"));
}

async fn bad_keys_are_refused(store: Arc<dyn ObjectStore>) {
    for key in ["", "/abs", "../up", "a/../b", "a//b", "white space"] {
        assert!(
            matches!(
                store.put_if_absent(key, Bytes::new()).await,
                Err(StoreError::InvalidKey(_))
            ),
            "{key}"
        );
        assert!(matches!(store.get(key).await, Err(StoreError::InvalidKey(_))), "{key}");
    }
    assert!(store.list("").await.unwrap().is_empty(), "nothing was written");
}

async fn s3_store() -> Option<Arc<dyn ObjectStore>> {
    let Ok(endpoint) = std::env::var("CAIRN_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var_os("CAIRN_TEST_REQUIRE_PEERS").is_none(),
            "CAIRN_TEST_S3_ENDPOINT is not set"
        );
        eprintln!("skipping: CAIRN_TEST_S3_ENDPOINT is not set (scripts/test starts an S3-compatible server)");
        return None;
    };
    let config = S3Config {
        endpoint,
        access_key_id: "cairn-test".into(),
        secret_access_key: "cairn-test-secret".into(),
        ..S3Config::default()
    };
    let bucket = format!("cairn-test-{:016x}", rand_u64());
    let store = S3Store::new(&bucket, "some/prefix", &config).unwrap();
    store.ensure_bucket().await.unwrap();
    Some(Arc::new(store))
}

fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (t.as_nanos() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id())
}

async fn on_local(dir: &cairn_testkit::TempDir) -> Option<Arc<dyn ObjectStore>> {
    Some(Arc::new(LocalStore::new(dir.path()).unwrap()))
}

async fn on_s3(_: &cairn_testkit::TempDir) -> Option<Arc<dyn ObjectStore>> {
    s3_store().await
}

cairn_testkit::behaviour_suite! {
    backends { local => on_local, s3 => on_s3 }
    tests {
    round_trip_and_missing,
    writes_are_create_only,
    concurrent_creates_have_one_winner,
    ranges_are_clamped,
    list_filters_by_prefix_in_key_order,
    delete_is_idempotent_and_frees_the_key,
    bad_keys_are_refused,
    }
}
