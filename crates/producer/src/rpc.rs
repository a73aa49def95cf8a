//! The calls the producer makes: every one carries the API key, a deadline
//! (never later than the caller's) and the trace context.

use std::time::Duration;

use cairn_proto::cairn::agent::v1::{self as pb, agent_service_client::AgentServiceClient};
use cairn_service::{auth::attach_key, client};
use tonic::{Request, Status};

use crate::{config::Compression, pool::Pool, record::EncodedProduce};

const PRODUCE_PATH: &str = "/cairn.agent.v1.AgentService/Produce";

/// Connections plus what every request carries.
#[derive(Debug)]
pub struct Rpc {
    pub pool: Pool,
    api_key: Option<String>,
    request_timeout: Duration,
    compression: Compression,
}

impl Rpc {
    pub fn new(pool: Pool, api_key: Option<String>, request_timeout: Duration, compression: Compression) -> Self {
        Rpc {
            pool,
            api_key,
            request_timeout,
            compression,
        }
    }

    /// `message` with the key, trace context and a deadline of `timeout`
    /// (`Duration::ZERO`: the request timeout), capped by the caller's.
    pub fn request<T>(&self, message: T, timeout: Duration) -> Result<Request<T>, Status> {
        let timeout = if timeout.is_zero() {
            self.request_timeout
        } else {
            timeout
        };
        let mut request = client::request(message, timeout);
        if let Some(key) = &self.api_key {
            attach_key(&mut request, key)?;
        }
        Ok(request)
    }

    /// Runs `call` under `timeout` (`Duration::ZERO`: the request timeout),
    /// enforced here as well as by the server.
    async fn bounded<T>(
        &self,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let timeout = if timeout.is_zero() {
            self.request_timeout
        } else {
            timeout
        };
        client::bounded(timeout, call).await
    }

    /// GetMetadata at `address`.
    pub async fn metadata(&self, address: &str, topics: Vec<String>) -> Result<pb::GetMetadataResponse, Status> {
        let channel = self
            .pool
            .channel(address)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = self.request(pb::GetMetadataRequest { topics }, Duration::ZERO)?;
        let mut client = AgentServiceClient::new(channel);
        Ok(self
            .bounded(Duration::ZERO, client.get_metadata(request))
            .await?
            .into_inner())
    }

    /// One Produce call to `address` with records already encoded, on the
    /// connection the partition uses.
    pub async fn produce(
        &self,
        address: &str,
        message: EncodedProduce,
        timeout: Duration,
    ) -> Result<pb::ProduceResponse, Status> {
        let channel = self
            .pool
            .channel_for(address, message.head.partition)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = self.request(message, timeout)?;
        self.bounded(timeout, async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            if self.compression == Compression::Gzip {
                grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
            }
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("connecting to {address}: {e}")))?;
            let codec = tonic_prost::ProstCodec::<EncodedProduce, pb::ProduceResponse>::default();
            let path = http::uri::PathAndQuery::from_static(PRODUCE_PATH);
            Ok(grpc.unary(request, path, codec).await?.into_inner())
        })
        .await
    }

    /// A producer id and epoch from the agent at `address`.
    pub async fn init_producer(&self, address: &str, name: &str) -> Result<pb::InitProducerResponse, Status> {
        let channel = self
            .pool
            .channel(address)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = self.request(pb::InitProducerRequest { name: name.to_owned() }, Duration::ZERO)?;
        let mut client = AgentServiceClient::new(channel);
        Ok(self
            .bounded(Duration::ZERO, client.init_producer(request))
            .await?
            .into_inner())
    }
}
