//! The key lifecycle behaviour suite, run against SQLite and a real Postgres
//! server (`CAIRN_TEST_PG_URL`, started by scripts/test).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_auth::{Keys, Store, config::KeysConfig, error::Error, keys::KeySpec, store};
use cairn_service::scope::Scope;
use cairn_testkit::TempDir;

fn spec(name: &str, scopes: &[&str]) -> KeySpec {
    KeySpec {
        name: name.into(),
        scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
        expires_at: None,
    }
}

async fn count(keys: &Keys) -> usize {
    keys.list(true, 1000, None).await.unwrap().0.len()
}

async fn create_then_authenticate(keys: Keys) {
    let (record, text) = keys
        .create(&spec("ingest", &["spans:write", "topics:produce:*"]))
        .await
        .unwrap();
    let got = keys.authenticate(&text).await.unwrap();
    assert_eq!(got.key_id, record.key_id);
    assert_eq!(got.scopes, vec!["spans:write", "topics:produce:*"]);

    let (_, other) = keys.create(&spec("other", &["spans:write"])).await.unwrap();
    // Same id, another key's secret and checksum: well-formed but wrong.
    let forged = format!("{}{}", &text[..19], &other[19..]);
    assert!(matches!(keys.authenticate(&forged).await, Err(Error::InvalidKey)));
    // A well-formed key nobody issued.
    let unknown = cairn_auth::key::generate().text;
    assert!(matches!(keys.authenticate(&unknown).await, Err(Error::InvalidKey)));
    assert!(matches!(keys.authenticate("not a key").await, Err(Error::InvalidKey)));
}

async fn revoked_keys_stop_working(keys: Keys) {
    let (record, text) = keys.create(&spec("k", &["tasks:create"])).await.unwrap();
    let first = keys.revoke(&record.key_id).await.unwrap().revoked_at.unwrap();
    assert!(matches!(keys.authenticate(&text).await, Err(Error::InvalidKey)));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = keys.revoke(&record.key_id).await.unwrap().revoked_at.unwrap();
    assert_eq!(first, again, "revoking twice keeps the first time");
    assert!(matches!(keys.revoke("AAAAAAAAAAAA").await, Err(Error::NotFound(_))));
}

async fn expired_keys_stop_working(keys: Keys) {
    let mut s = spec("short", &["tasks:create"]);
    s.expires_at = Some(store::now_ms() + 300);
    let (_, text) = keys.create(&s).await.unwrap();
    assert!(keys.authenticate(&text).await.is_ok());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(keys.authenticate(&text).await, Err(Error::InvalidKey)));

    let before = count(&keys).await;
    s.expires_at = Some(store::now_ms() - 1);
    assert!(matches!(keys.create(&s).await, Err(Error::InvalidArgument { field, .. }) if field == "expires_at"));
    assert_eq!(count(&keys).await, before, "a rejected create stores nothing");
}

async fn list_pages_newest_first_and_hides_revoked(keys: Keys) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            keys.create(&spec(&format!("k{i}"), &["spans:write"]))
                .await
                .unwrap()
                .0
                .key_id,
        );
    }
    keys.revoke(&ids[2]).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = keys.list(true, 2, cursor.as_ref()).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|k| (k.created_at, k.key_id)));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "every key exactly once across pages");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");

    let (live, _) = keys.list(false, 100, None).await.unwrap();
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|k| k.key_id != ids[2]));
}

async fn rotation_keeps_the_old_key_for_the_grace_period(keys: Keys) {
    let (old, old_text) = keys.create(&spec("svc", &["topics:consume:clicks"])).await.unwrap();
    let (new, new_text, previous) = keys
        .rotate(&old.key_id, Some(Duration::from_millis(400)))
        .await
        .unwrap();
    assert_eq!(new.rotated_from.as_deref(), Some(old.key_id.as_str()));
    assert_eq!((new.name.as_str(), &new.scopes), (old.name.as_str(), &old.scopes));
    assert!(previous.expires_at.is_some());
    assert!(keys.authenticate(&old_text).await.is_ok(), "old key valid during grace");
    assert!(keys.authenticate(&new_text).await.is_ok());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(keys.authenticate(&old_text).await, Err(Error::InvalidKey)),
        "old key expired after grace"
    );
    assert!(keys.authenticate(&new_text).await.is_ok());

    let (_, _, _) = keys.rotate(&new.key_id, Some(Duration::ZERO)).await.unwrap();
    assert!(
        matches!(keys.authenticate(&new_text).await, Err(Error::InvalidKey)),
        "zero grace ends it at once"
    );

    keys.revoke(&old.key_id).await.unwrap();
    assert!(matches!(keys.rotate(&old.key_id, None).await, Err(Error::Revoked(_))));
    assert!(matches!(
        keys.rotate("AAAAAAAAAAAA", None).await,
        Err(Error::NotFound(_))
    ));
    let too_long = KeysConfig::default().max_rotation_grace + Duration::from_secs(1);
    assert!(matches!(
        keys.rotate(&new.key_id, Some(too_long)).await,
        Err(Error::InvalidArgument { .. })
    ));
}

async fn bootstrap_happens_once_even_when_raced(keys: Keys) {
    let (a, b) = tokio::join!(keys.bootstrap_admin("admin"), keys.bootstrap_admin("admin"));
    assert!(a.is_ok() ^ b.is_ok(), "exactly one concurrent bootstrap wins");
    let (record, text) = a.or(b).unwrap();
    assert_eq!(record.scopes, vec!["keys:admin"]);
    assert!(keys.authenticate(&text).await.is_ok());
    assert!(matches!(
        keys.bootstrap_admin("admin").await,
        Err(Error::AlreadyBootstrapped(_))
    ));
    assert_eq!(count(&keys).await, 1, "no second admin key was created");
}

async fn last_used_is_written_in_batches(keys: Keys) {
    let (record, text) = keys.create(&spec("k", &["spans:write"])).await.unwrap();
    keys.authenticate(&text).await.unwrap();
    assert_eq!(
        keys.get(&record.key_id).await.unwrap().last_used_at,
        None,
        "no write per request"
    );
    keys.flush_last_used().await.unwrap();
    let first = keys.get(&record.key_id).await.unwrap().last_used_at.unwrap();
    assert!(first >= record.created_at);
    tokio::time::sleep(Duration::from_millis(5)).await;
    keys.authenticate(&text).await.unwrap();
    keys.flush_last_used().await.unwrap();
    assert!(keys.get(&record.key_id).await.unwrap().last_used_at.unwrap() > first);
}

async fn only_a_hash_of_the_secret_is_stored(keys: Keys) {
    let (record, text) = keys.create(&spec("k", &["spans:write"])).await.unwrap();
    let stored = keys.get(&record.key_id).await.unwrap();
    let secret = &text[19..49];
    let row = format!("{stored:?}");
    assert!(!row.contains(secret) && !row.contains(&text));
    assert_eq!(stored.secret_hash.len(), 64, "hex SHA-256");
}

async fn on_sqlite(dir: &TempDir) -> Option<Keys> {
    let store = Store::connect(&cairn_testkit::sqlite_url(dir.path()), 4).await.unwrap();
    Some(Keys::new(store, Default::default()))
}

async fn on_postgres(_: &TempDir) -> Option<Keys> {
    let store = Store::connect(&cairn_testkit::postgres_url().await?, 4).await.unwrap();
    Some(Keys::new(store, Default::default()))
}

cairn_testkit::behaviour_suite! {
    backends { sqlite => on_sqlite, postgres => on_postgres }
    tests {
    create_then_authenticate,
    revoked_keys_stop_working,
    expired_keys_stop_working,
    list_pages_newest_first_and_hides_revoked,
    rotation_keeps_the_old_key_for_the_grace_period,
    bootstrap_happens_once_even_when_raced,
    last_used_is_written_in_batches,
    only_a_hash_of_the_secret_is_stored,
    }
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_version_still_opens() {
    let dir = cairn_testkit::TempDir::new("auth");
    let url = cairn_testkit::sqlite_url(dir.path());
    let store = Store::connect(&url, 1).await.unwrap();
    store.close().await;
    // A newer binary (rolling upgrade) applied a migration this one does not have.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let store = Store::connect(&url, 1).await.unwrap();
    let keys = Keys::new(store, Default::default());
    assert!(keys.create(&spec("after-upgrade", &["spans:write"])).await.is_ok());
}
