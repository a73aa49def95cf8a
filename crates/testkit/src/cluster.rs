//! Real `cairn-agent` processes against a shared metadata database, and the
//! plain gRPC calls tests make to them (auth disabled).

#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, time::Duration};

use crate::{Process, TempDir};
use cairn_proto::cairn::agent::v1::{
    self as pb, agent_service_client::AgentServiceClient, topic_service_client::TopicServiceClient,
};
use cairn_service::ClientConfig;
use tonic::transport::Channel;

/// A metadata database and a place for agents' data.
pub struct Cluster {
    pub dir: TempDir,
    pub meta_url: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Cluster {
    /// Agents with SQLite metadata in a fresh directory.
    pub fn new() -> Cluster {
        let dir = TempDir::new("agents");
        let meta_url = crate::sqlite_url(dir.path());
        Cluster { dir, meta_url }
    }

    /// A cluster whose agents share a fresh database on the test Postgres
    /// server, or `None` (test skipped) when there is none.
    pub async fn on_postgres() -> Option<Cluster> {
        let meta_url = crate::postgres_url().await?;
        Some(Cluster {
            dir: TempDir::new("agents-pg"),
            meta_url,
        })
    }

    /// A local object store directory shared by this cluster's agents, and the
    /// `--set` value that points an agent at it.
    pub fn objects(&self) -> (PathBuf, String) {
        let dir = self.dir.path().join("objects");
        let arg = format!("object_store.url=file://{}", dir.display());
        (dir, arg)
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts agent `name` (its data dir is kept across restarts) and waits for SERVING.
    pub async fn start(&self, name: &str, extra: &[&str]) -> Process {
        self.launch(None, name, extra).await
    }

    /// [`Cluster::start`] on a given port, so a restarted agent keeps its address.
    pub async fn start_on(&self, port: u16, name: &str, extra: &[&str]) -> Process {
        self.launch(Some(port), name, extra).await
    }

    /// Starts the agent: on a port it chooses itself, or on `port` (a
    /// restart), waiting a moment when the port is still held by the
    /// process that had it (its sockets may linger after a kill).
    async fn launch(&self, port: Option<u16>, name: &str, extra: &[&str]) -> Process {
        let mut last = String::new();
        for _ in 0..5 {
            let mut agent = self.spawn(port, name, extra);
            match agent.try_wait_serving(Duration::from_secs(60)).await {
                Ok(()) => return agent,
                Err(exited) if port.is_some() && exited.contains("Address already in use") => {
                    last = exited;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(exited) => panic!("{exited}"),
            }
        }
        panic!("port still taken after 5 tries: {last}");
    }

    /// Starts `cairn-ingest` (auth off) writing and reading through
    /// `agents`, reading segments from this cluster's object store, every
    /// listener on a port of its own (`otlp`, `otlp_http`, `grpc`), and
    /// waits for SERVING (its topics exist).
    pub async fn start_ingest(&self, name: &str, agents: &[&str], extra: &[&str]) -> Process {
        let data = self.data_dir(name);
        std::fs::create_dir_all(&data).unwrap();
        let agents = format!(
            "ingest.agents=[{}]",
            agents.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(",")
        );
        let mut args: Vec<String> = [
            "auth.enabled=false",
            "otlp.listen=127.0.0.1:0",
            "otlp.http_listen=127.0.0.1:0",
            &agents,
            &self.objects().1,
        ]
        .iter()
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut ingest = Process::start("cairn-ingest", &args, &[], &data);
        ingest.wait_serving(Duration::from_secs(60)).await;
        ingest
    }

    fn spawn(&self, port: Option<u16>, name: &str, extra: &[&str]) -> Process {
        let data = self.data_dir(name);
        std::fs::create_dir_all(&data).unwrap();
        let mut args: Vec<String> = vec![
            "--set".into(),
            "auth.enabled=false".into(),
            "--set".into(),
            format!("metadata.url={}", self.meta_url),
            "--set".into(),
            format!("agent.data_dir={}", data.display()),
            "--set".into(),
            "agent.lease=3s".into(),
            "--set".into(),
            "agent.renew_interval=500ms".into(),
            "--set".into(),
            "agent.lease_safety_margin=1s".into(),
            // One object store for the whole cluster (a partition's segments must be
            // readable by whichever agent leads it next); `extra` may point elsewhere.
            "--set".into(),
            self.objects().1,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match port {
            Some(port) => Process::start_on(port, "cairn-agent", &args, &[], &data),
            None => Process::start("cairn-agent", &args, &[], &data),
        }
    }
}

/// The `--set` arguments that point an agent at bucket `bucket` of the
/// S3-compatible server at `endpoint` (moto accepts any credentials).
pub fn s3_store_args(bucket: &str, endpoint: &str) -> Vec<String> {
    [
        format!("object_store.url=s3://{bucket}/segments"),
        format!("object_store.s3.endpoint={endpoint}"),
        "object_store.s3.access_key_id=test".to_owned(),
        "object_store.s3.secret_access_key=test-secret".to_owned(),
    ]
    .into_iter()
    .flat_map(|a| ["--set".to_owned(), a])
    .collect()
}

pub async fn channel(addr: &str) -> Channel {
    cairn_service::client::endpoint(addr, &ClientConfig::default())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn agent(addr: &str) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(channel(addr).await)
}

pub async fn topics(addr: &str) -> TopicServiceClient<Channel> {
    TopicServiceClient::new(channel(addr).await)
}

pub async fn create_topic(addr: &str, name: &str, partitions: u32) {
    create_topic_with(
        addr,
        name,
        pb::TopicConfig {
            partitions,
            ..Default::default()
        },
    )
    .await;
}

pub async fn create_topic_with(addr: &str, name: &str, config: pb::TopicConfig) {
    let request = pb::CreateTopicRequest {
        name: name.into(),
        config: Some(config),
    };
    topics(addr).await.create_topic(request).await.unwrap();
}

pub fn records(values: &[String]) -> Vec<pb::Record> {
    values
        .iter()
        .map(|v| pb::Record {
            value: v.as_bytes().to_vec(),
            ..Default::default()
        })
        .collect()
}

/// Waits until this agent leads `partition` (it acquires leases in the background).
pub async fn wait_leader(addr: &str, topic: &str, partition: u32) {
    crate::eventually(
        Duration::from_secs(10),
        &format!("{addr} leads {topic}/{partition}"),
        || async move {
            let meta = agent(addr)
                .await
                .get_metadata(pb::GetMetadataRequest {
                    topics: vec![topic.into()],
                })
                .await
                .ok()?;
            let p = meta.into_inner().topics[0].partitions[partition as usize].clone();
            // The lease row names the leader before it has opened the partition:
            // wait until it actually serves it.
            let probe = pb::FetchRequest {
                frames: false,
                topic: topic.into(),
                partition,
                offset: p.high_watermark,
                max_bytes: 1,
                max_wait_ms: 0,
            };
            (p.leader_address == addr && agent(addr).await.fetch(probe).await.is_ok()).then_some(())
        },
    )
    .await;
}

/// The leader address of every partition of `topic` (as `any` agent answers),
/// once `done` accepts them.
pub async fn leaders_when(any: &str, topic: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let done = &done;
    crate::eventually(
        Duration::from_secs(30),
        &format!("leaders of {topic} as expected"),
        || async move {
            let meta = agent(any)
                .await
                .get_metadata(pb::GetMetadataRequest {
                    topics: vec![topic.into()],
                })
                .await
                .ok()?;
            let leaders: Vec<String> = meta.into_inner().topics[0]
                .partitions
                .iter()
                .map(|p| p.leader_address.clone())
                .collect();
            done(&leaders).then_some(leaders)
        },
    )
    .await
}

/// Every record of a partition, from offset 0 to the high watermark.
pub async fn read_all(addr: &str, topic: &str, partition: u32) -> Vec<pb::StoredRecord> {
    let mut client = agent(addr).await;
    let mut out = Vec::new();
    loop {
        let page = client
            .fetch(pb::FetchRequest {
                frames: false,
                topic: topic.into(),
                partition,
                offset: out.len() as u64,
                max_bytes: 0,
                max_wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if page.records.is_empty() {
            assert_eq!(page.high_watermark, out.len() as u64);
            return out;
        }
        out.extend(page.records);
    }
}

/// Every record value of a partition, as text.
pub async fn read_values(addr: &str, topic: &str, partition: u32) -> Vec<String> {
    read_all(addr, topic, partition)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.value).unwrap())
        .collect()
}

/// A `cairn-auth` process with its own SQLite store in the cluster's directory,
/// and the admin key `bootstrap-admin` printed for it.
pub async fn start_auth(cluster: &Cluster) -> (Process, String) {
    let store = format!("store.url=sqlite://{}/auth.db?mode=rwc", cluster.dir.path().display());
    let out = std::process::Command::new(crate::binary("cairn-auth"))
        .args(["--set", &store, "bootstrap-admin"])
        .output()
        .unwrap();
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut auth = Process::start("cairn-auth", &["--set", &store], &[], cluster.dir.path());
    auth.wait_serving(Duration::from_secs(30)).await;
    (auth, admin)
}

/// `message` carrying `key`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    cairn_service::auth::attach_key(&mut request, key).unwrap();
    request
}

/// A new API key with `scopes`, created with the `admin` key.
pub async fn create_key(auth: &str, admin: &str, scopes: &[&str]) -> String {
    use cairn_proto::cairn::auth::v1::{CreateKeyRequest, key_admin_service_client::KeyAdminServiceClient};
    let request = CreateKeyRequest {
        name: "test".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: None,
    };
    KeyAdminServiceClient::new(channel(auth).await)
        .create_key(with_key(request, admin))
        .await
        .unwrap()
        .into_inner()
        .api_key
}
