//! Keys and scopes on every ingest listener, checked by a real cairn-auth,
//! and an auth outage: UNAVAILABLE at once (never UNAUTHENTICATED), and an
//! exporter's retry succeeds once auth is back.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_proto::cairn::ingest::v1::{ReadRecordsRequest, read_service_client::ReadServiceClient};
use cairn_proto::ingestion::ReadSpansRequest;
use cairn_testkit::{Process, http_post, metric};
use common::*;
use prost::Message;
use tonic::{Code, Request, metadata::MetadataValue};

fn header<T>(message: T, name: &'static str, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(name, MetadataValue::try_from(value).unwrap());
    request
}

#[tokio::test]
async fn every_listener_checks_keys_and_scopes_and_an_auth_outage_is_unavailable() {
    let cluster = Cluster::new();
    let (mut auth, admin) = start_auth(&cluster).await;
    let a = cluster.start("a", &[]).await;
    let auth_address = format!("auth.address={}", auth.addr);
    let ingest = cluster
        .start_ingest(
            "ingest",
            &[&a.addr],
            &[
                "--set",
                "auth.enabled=true",
                "--set",
                &auth_address,
                "--set",
                "ingest.internal_listen=127.0.0.1:0",
            ],
        )
        .await;
    let writer = create_key(&auth.addr, &admin, &["spans:write"]).await;
    let logs_only = create_key(&auth.addr, &admin, &["logs:write"]).await;
    let reader = create_key(&auth.addr, &admin, &["spans:read"]).await;
    let consumer = create_key(&auth.addr, &admin, &["topics:consume:otel.*"]).await;
    let later = create_key(&auth.addr, &admin, &["spans:write"]).await;
    let otlp_addr = ingest.address("otlp").to_owned();
    let mut client = otlp(&otlp_addr).await;
    let spans = |n| request("svc", vec![span(n)]);

    let none = client.export(spans(0)).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let wrong = client
        .export(with_key(spans(0), "cairn_not_a_real_key"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let scope = client.export(with_key(spans(0), &logs_only)).await.unwrap_err();
    assert_eq!(scope.code(), Code::PermissionDenied, "{scope:?}");
    client.export(with_key(spans(1), &writer)).await.unwrap();
    client
        .export(header(spans(2), "x-junjo-api-key", &writer))
        .await
        .expect("Junjo's header carries the key");
    client.export(header(spans(3), "x-api-key", &writer)).await.unwrap();

    let read = |key: String| {
        let addr = ingest.addr.clone();
        async move {
            let mut c = spans_client(&addr).await;
            let mut stream = c
                .read_spans(with_key(
                    ReadSpansRequest {
                        start_key_ulid: vec![],
                        batch_size: 10,
                    },
                    &key,
                ))
                .await?
                .into_inner();
            let mut n = 0;
            while stream.message().await?.is_some() {
                n += 1;
            }
            Ok::<_, tonic::Status>(n)
        }
    };
    assert_eq!(read(writer.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(read(reader.clone()).await.unwrap(), 3);
    // An unchanged Junjo backend sends no key: the main port refuses it, the
    // internal listener (a private network) serves it.
    let no_key = page(&ingest.addr, &[], 10).await.unwrap_err();
    assert_eq!(no_key.code(), Code::Unauthenticated);
    assert_eq!(page(ingest.address("internal"), &[], 10).await.unwrap().len(), 3);
    let records = |key: String| {
        let addr = ingest.addr.clone();
        async move {
            ReadServiceClient::new(channel(&addr).await)
                .read_records(with_key(
                    ReadRecordsRequest {
                        topic: "otel.spans".into(),
                        ..Default::default()
                    },
                    &key,
                ))
                .await
                .map(|_| ())
        }
    };
    assert_eq!(
        records(reader.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    records(consumer).await.unwrap();

    let http = ingest.address("otlp_http").to_owned();
    let body = spans(4).encode_to_vec();
    let proto = ("content-type", "application/x-protobuf");
    assert_eq!(http_post(&http, "/v1/traces", &[proto], &body).await.status, 401);
    let forbidden = http_post(&http, "/v1/traces", &[proto, ("x-api-key", &logs_only)], &body).await;
    assert_eq!(forbidden.status, 403);
    let bearer = format!("Bearer {writer}");
    assert_eq!(
        http_post(&http, "/v1/traces", &[proto, ("authorization", &bearer)], &body)
            .await
            .status,
        200
    );

    // cairn-auth goes away: a key not in the cache is refused retryably,
    // never as unauthenticated.
    let port: u16 = auth.addr.rsplit(':').next().unwrap().parse().unwrap();
    auth.kill();
    let down = client.export(with_key(spans(5), &later)).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    let retry = cairn_client::status::retry_after(&down).expect("retry info");
    assert!(retry <= Duration::from_secs(1), "a short retry delay: {retry:?}");
    // Known down now: the next one is refused without a lookup.
    let again = client.export(with_key(spans(5), &later)).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable);
    let scrape = ingest.scrape().await;
    assert!(metric(&scrape, "cairn_auth_client_unavailable_fast_total").unwrap() >= 1.0);
    let http_down = http_post(&http, "/v1/traces", &[proto, ("x-api-key", &later)], &body).await;
    assert_eq!(http_down.status, 503);
    assert!(http_down.header("retry-after").is_some());

    // Back on the same address: the exporter's retry goes through.
    let store = format!("store.url=sqlite://{}/auth.db?mode=rwc", cluster.dir.path().display());
    let mut auth = Process::start_on(port, "cairn-auth", &["--set", &store], &[], cluster.dir.path());
    auth.wait_serving(Duration::from_secs(30)).await;
    cairn_testkit::eventually(Duration::from_secs(10), "an export with the key succeeds", || {
        let mut client = client.clone();
        let later = later.clone();
        async move { client.export(with_key(spans(5), &later)).await.ok() }
    })
    .await;
    assert_eq!(read(reader).await.unwrap(), 5);
}
