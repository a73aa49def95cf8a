//! The auth service over real gRPC connections: statuses, scopes, the Junjo
//! `ValidateApiKey` contract, bad input, and a failing key store.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_auth::{Config, Keys, Store, keys::KeySpec};
use cairn_proto::{
    Timestamp,
    cairn::auth::v1::{
        self as pb, auth_service_client::AuthServiceClient, key_admin_service_client::KeyAdminServiceClient,
    },
    ingestion::{ValidateApiKeyRequest, internal_auth_service_client::InternalAuthServiceClient},
};
use cairn_service::{auth::attach_key, scope::Scope, status};
use cairn_testkit::TempDir;
use tonic::{Code, Request, transport::Channel};

struct Harness {
    channel: Channel,
    keys: Keys,
    admin: String,
    _stop: Stop,
    _dir: TempDir,
}

/// Shuts the in-process server down when the test ends.
struct Stop(cairn_service::Runtime);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

async fn start_with(url: Option<String>) -> Harness {
    let dir = TempDir::new("auth-grpc");
    let url = url.unwrap_or_else(|| cairn_testkit::sqlite_url(dir.path()));
    let store = Store::connect(&url, 4).await.unwrap();
    let keys = Keys::new(store, Default::default());
    let (_, admin) = keys.bootstrap_admin("admin").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = cairn_service::Runtime::with_listener("cairn-auth", listener).unwrap();
    tokio::spawn(cairn_auth::serve(Config::default(), keys.clone(), rt.clone()));
    let channel = cairn_service::client::endpoint(&addr.to_string(), &Default::default())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Harness {
        channel,
        keys,
        admin,
        _stop: Stop(rt),
        _dir: dir,
    }
}

async fn start() -> Harness {
    start_with(None).await
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    attach_key(&mut request, key).unwrap();
    request
}

impl Harness {
    fn admin_client(&self) -> KeyAdminServiceClient<Channel> {
        KeyAdminServiceClient::new(self.channel.clone())
    }

    async fn create(&self, scopes: &[&str], expires_at: Option<Timestamp>) -> pb::CreateKeyResponse {
        let req = pb::CreateKeyRequest {
            name: "test key".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at,
        };
        self.admin_client()
            .create_key(with_key(req, &self.admin))
            .await
            .unwrap()
            .into_inner()
    }

    async fn authenticate(&self, key: &str) -> Result<pb::Principal, tonic::Status> {
        AuthServiceClient::new(self.channel.clone())
            .authenticate(pb::AuthenticateRequest { api_key: key.into() })
            .await
            .map(|r| r.into_inner().principal.unwrap())
    }

    async fn validate(&self, key: &str) -> Result<bool, tonic::Status> {
        InternalAuthServiceClient::new(self.channel.clone())
            .validate_api_key(ValidateApiKeyRequest { api_key: key.into() })
            .await
            .map(|r| r.into_inner().is_valid)
    }

    async fn key_count(&self) -> usize {
        self.keys.list(true, 1000, None).await.unwrap().0.len()
    }
}

fn in_ms(ms: i64) -> Timestamp {
    let at = cairn_auth::store::now_ms() + ms;
    Timestamp {
        seconds: at / 1000,
        nanos: ((at % 1000) * 1_000_000) as i32,
    }
}

#[tokio::test]
async fn authenticate_and_validate_agree_for_every_kind_of_key() {
    let h = start().await;
    let valid = h.create(&["spans:write"], None).await;
    let revoked = h.create(&["spans:write"], None).await;
    h.admin_client()
        .revoke_key(with_key(
            pb::RevokeKeyRequest {
                key_id: revoked.key.unwrap().key_id,
            },
            &h.admin,
        ))
        .await
        .unwrap();
    let expiring = h.create(&["spans:write"], Some(in_ms(300))).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let unknown = cairn_auth::key::generate().text;

    let principal = h.authenticate(&valid.api_key).await.unwrap();
    assert_eq!(principal.key_id, valid.key.as_ref().unwrap().key_id);
    assert_eq!(principal.scopes, vec!["spans:write"]);
    assert!(h.validate(&valid.api_key).await.unwrap());

    let mut messages = Vec::new();
    for bad in [&revoked.api_key, &expiring.api_key, &unknown, "garbage", ""] {
        let error = h.authenticate(bad).await.unwrap_err();
        assert_eq!(error.code(), Code::Unauthenticated, "{bad}");
        messages.push(error.message().to_owned());
        assert!(
            !h.validate(bad).await.unwrap(),
            "ValidateApiKey is false with status OK for {bad:?}"
        );
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "one message for every reason, revealing nothing: {messages:?}"
    );
}

#[tokio::test]
async fn admin_rpcs_need_a_key_with_keys_admin() {
    let h = start().await;
    let plain = h.create(&["topics:*"], None).await;
    let list = pb::ListKeysRequest::default();

    let error = h.admin_client().list_keys(list.clone()).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "no key");
    let error = h
        .admin_client()
        .list_keys(with_key(list.clone(), "cairn_bogus"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "bad key");
    let error = h
        .admin_client()
        .list_keys(with_key(list.clone(), &plain.api_key))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "valid key without keys:admin");
    assert!(error.message().contains("keys:admin"));

    let mut request = Request::new(list);
    request.metadata_mut().insert("x-api-key", h.admin.parse().unwrap());
    let keys = h.admin_client().list_keys(request).await.unwrap().into_inner().keys;
    assert_eq!(keys.len(), 2);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_creates_nothing() {
    let h = start().await;
    let before = h.key_count().await;
    let cases: Vec<(pb::CreateKeyRequest, &str)> = vec![
        (
            pb::CreateKeyRequest {
                name: String::new(),
                scopes: vec!["spans:write".into()],
                expires_at: None,
            },
            "name",
        ),
        (
            pb::CreateKeyRequest {
                name: "x\ny".into(),
                scopes: vec!["spans:write".into()],
                expires_at: None,
            },
            "name",
        ),
        (
            pb::CreateKeyRequest {
                name: "ok".into(),
                scopes: vec![],
                expires_at: None,
            },
            "scopes",
        ),
        (
            pb::CreateKeyRequest {
                name: "ok".into(),
                scopes: vec!["spans:write".into(), "Bad Scope".into()],
                expires_at: None,
            },
            "scopes[1]",
        ),
        (
            pb::CreateKeyRequest {
                name: "ok".into(),
                scopes: vec!["spans:write".into()],
                expires_at: Some(in_ms(-1000)),
            },
            "expires_at",
        ),
        (
            pb::CreateKeyRequest {
                name: "ok".into(),
                scopes: vec!["spans:write".into()],
                expires_at: Some(Timestamp { seconds: 1, nanos: -5 }),
            },
            "expires_at",
        ),
    ];
    for (request, field) in cases {
        let error = h
            .admin_client()
            .create_key(with_key(request, &h.admin))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(status::field_violations(&error)[0].0, field, "{error:?}");
    }
    assert_eq!(h.key_count().await, before, "nothing half-applied");

    for (request, field) in [
        (
            pb::ListKeysRequest {
                page_size: 5000,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListKeysRequest {
                page_token: "nope".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let error = h
            .admin_client()
            .list_keys(with_key(request, &h.admin))
            .await
            .unwrap_err();
        assert_eq!(status::field_violations(&error)[0].0, field);
    }
    let error = h
        .admin_client()
        .get_key(with_key(
            pb::GetKeyRequest {
                key_id: "../../etc".into(),
            },
            &h.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = h
        .admin_client()
        .get_key(with_key(
            pb::GetKeyRequest {
                key_id: "AAAAAAAAAAAA".into(),
            },
            &h.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = h
        .admin_client()
        .rotate_key(with_key(
            pb::RotateKeyRequest {
                key_id: "AAAAAAAAAAAA".into(),
                grace_period: Some(prost_types_duration(-1)),
            },
            &h.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status::field_violations(&error)[0].0, "grace_period");
}

fn prost_types_duration(seconds: i64) -> cairn_proto::Duration {
    cairn_proto::Duration { seconds, nanos: 0 }
}

#[tokio::test]
async fn secrets_are_shown_once_and_never_listed() {
    let h = start().await;
    let created = h.create(&["spans:write"], None).await;
    let secret = &created.api_key[19..49];
    let id = created.key.unwrap().key_id;
    let listed = h
        .admin_client()
        .list_keys(with_key(pb::ListKeysRequest::default(), &h.admin))
        .await
        .unwrap();
    let got = h
        .admin_client()
        .get_key(with_key(pb::GetKeyRequest { key_id: id.clone() }, &h.admin))
        .await
        .unwrap();
    let stored_hash = h.keys.get(&id).await.unwrap().secret_hash;
    for text in [format!("{:?}", listed.into_inner()), format!("{:?}", got.into_inner())] {
        assert!(!text.contains(secret), "secret leaked: {text}");
        assert!(!text.contains(&stored_hash), "hash leaked: {text}");
    }
}

#[tokio::test]
async fn rotate_over_grpc_returns_a_new_working_key() {
    let h = start().await;
    let created = h.create(&["tasks:create"], None).await;
    let rotated = h
        .admin_client()
        .rotate_key(with_key(
            pb::RotateKeyRequest {
                key_id: created.key.unwrap().key_id,
                grace_period: Some(prost_types_duration(60)),
            },
            &h.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(h.validate(&rotated.api_key).await.unwrap());
    assert!(
        h.validate(&created.api_key).await.unwrap(),
        "old key within its grace period"
    );
    assert!(rotated.previous.unwrap().expires_at.is_some());
}

async fn assert_outage_is_unavailable(h: &Harness, valid: &str) {
    for key in [valid.to_owned(), cairn_auth::key::generate().text] {
        let error = h.validate(&key).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "ValidateApiKey: {error:?}");
        assert!(status::retry_after(&error).is_some());
        let error = h.authenticate(&key).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "Authenticate: {error:?}");
    }
    let error = h
        .admin_client()
        .list_keys(with_key(pb::ListKeysRequest::default(), &h.admin))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Code::Unavailable,
        "admin auth during an outage: {error:?}"
    );
}

#[tokio::test]
async fn a_closed_store_is_unavailable_never_valid_or_internal() {
    let h = start().await;
    let valid = h.create(&["spans:write"], None).await.api_key;
    h.keys.store().close().await;
    assert_outage_is_unavailable(&h, &valid).await;
}

#[tokio::test]
async fn a_postgres_outage_is_unavailable_never_valid_or_internal() {
    let Some(url) = cairn_testkit::postgres_url().await else {
        return;
    };
    let h = start_with(Some(url.clone())).await;
    let valid = h.create(&["spans:write"], None).await.api_key;
    // Cut the service off its database: no new connections, existing ones killed.
    let (server, db) = url.rsplit_once('/').unwrap();
    let admin_url = format!("{server}/postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_outage_is_unavailable(&h, &valid).await;

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS true"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if matches!(h.validate(&valid).await, Ok(true)) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the service recovers when the database returns");
}

#[allow(dead_code)]
fn _spec(_: KeySpec, _: Scope) {}
