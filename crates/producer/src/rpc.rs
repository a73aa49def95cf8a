//! The calls the producer makes, through the shared client layer
//! (`cairn_client::Client`): every one carries the API key, a deadline (never
//! later than the caller's, enforced on this side too) and the trace context.

use std::time::Duration;

use cairn_client::Client;
use cairn_proto::cairn::agent::v1::{self as pb, agent_service_client::AgentServiceClient};
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
    metrics: Option<cairn_client::Metrics>,
    untraced: bool,
}

impl Rpc {
    pub fn new(
        pool: Pool,
        api_key: Option<String>,
        request_timeout: Duration,
        compression: Compression,
        metrics: Option<cairn_client::Metrics>,
        untraced: bool,
    ) -> Self {
        Rpc {
            pool,
            api_key,
            request_timeout,
            compression,
            metrics,
            untraced,
        }
    }

    /// The client layer over `channel`, with a deadline of `timeout`
    /// (`Duration::ZERO`: the request timeout).
    fn client(&self, channel: tonic::transport::Channel, timeout: Duration) -> Result<Client, Status> {
        let timeout = if timeout.is_zero() {
            self.request_timeout
        } else {
            timeout
        };
        let mut client = Client::new(channel, timeout);
        if let Some(key) = &self.api_key {
            client = client.with_key(key)?;
        }
        if let Some(metrics) = &self.metrics {
            client = client.with_metrics(metrics);
        }
        if self.untraced {
            client = client.untraced();
        }
        Ok(client)
    }

    /// GetMetadata at `address`.
    pub async fn metadata(&self, address: &str, topics: Vec<String>) -> Result<pb::GetMetadataResponse, Status> {
        let channel = self
            .pool
            .channel(address)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = AgentServiceClient::new(self.client(channel, Duration::ZERO)?);
        Ok(client
            .get_metadata(pb::GetMetadataRequest { topics })
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
        let mut grpc = tonic::client::Grpc::new(self.client(channel, timeout)?);
        if self.compression == Compression::Gzip {
            grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connecting to {address}: {e}")))?;
        let codec = tonic_prost::ProstCodec::<EncodedProduce, pb::ProduceResponse>::default();
        let path = http::uri::PathAndQuery::from_static(PRODUCE_PATH);
        Ok(grpc.unary(Request::new(message), path, codec).await?.into_inner())
    }

    /// A producer id and epoch from the agent at `address`.
    pub async fn init_producer(&self, address: &str, name: &str) -> Result<pb::InitProducerResponse, Status> {
        let channel = self
            .pool
            .channel(address)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = AgentServiceClient::new(self.client(channel, Duration::ZERO)?);
        Ok(client
            .init_producer(pb::InitProducerRequest { name: name.to_owned() })
            .await?
            .into_inner())
    }
}
