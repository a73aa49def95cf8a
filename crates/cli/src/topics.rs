//! `cairn topics` and `cairn produce`: talk to agents.

use std::{io::BufRead, process::ExitCode};

use anyhow::Context;
use cairn_producer::{Producer, ProducerRecord};
use cairn_proto::cairn::agent::v1::{self as pb, topic_service_client::TopicServiceClient};
use clap::{Args, Subcommand};

use crate::{
    rpc::{Target, connect, request},
    time::format_timestamp,
};

const DEFAULT_AGENT: &str = "127.0.0.1:50052";

/// `cairn topics …`
#[derive(Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: TopicsCommand,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create a topic (needs topics:admin).
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Delete segments older than this many ms (0 = keep).
        #[arg(long, default_value_t = 0)]
        retention_ms: i64,
        /// Keep at most this many bytes per partition (0 = no limit).
        #[arg(long, default_value_t = 0)]
        retention_bytes: i64,
    },
    /// List topics.
    List,
    /// Show a topic and its partitions' leaders and offsets.
    Describe { name: String },
    /// Delete a topic (needs topics:admin).
    Delete { name: String },
}

/// `cairn produce`
#[derive(Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    topic: String,
    /// Partition to write to; without it the producer's partitioner picks
    /// (by key, or sticky for keyless lines).
    #[arg(long)]
    partition: Option<u32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    key_separator: Option<String>,
}

fn addr(target: &Target) -> &str {
    target.addr.as_deref().unwrap_or(DEFAULT_AGENT)
}

/// Runs `cairn topics …`.
pub async fn topics(args: TopicsArgs) -> anyhow::Result<ExitCode> {
    let key = args.target.api_key.as_deref();
    let mut client = TopicServiceClient::new(connect(addr(&args.target)).await?);
    match args.command {
        TopicsCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
        } => {
            let config = pb::TopicConfig {
                partitions,
                retention_ms,
                retention_bytes,
                ..Default::default()
            };
            client
                .create_topic(request(
                    pb::CreateTopicRequest {
                        name: name.clone(),
                        config: Some(config),
                    },
                    key,
                )?)
                .await?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicsCommand::List => {
            let topics = client
                .list_topics(request(pb::ListTopicsRequest {}, key)?)
                .await?
                .into_inner()
                .topics;
            println!("{:<30}  {:>10}  CREATED", "TOPIC", "PARTITIONS");
            for t in topics {
                let c = t.config.unwrap_or_default();
                let created = t.created_at.as_ref().map(format_timestamp).unwrap_or_default();
                println!("{:<30}  {:>10}  {created}", t.name, c.partitions);
            }
        }
        TopicsCommand::Describe { name } => {
            let mut d = client
                .describe_topic(request(pb::DescribeTopicRequest { name: name.clone() }, key)?)
                .await?
                .into_inner();
            // Any agent knows another's offsets only as of its last lease
            // renewal; each leader knows its own exactly, so ask it.
            let leaders: std::collections::BTreeSet<String> = d
                .partitions
                .iter()
                .map(|p| p.leader_address.clone())
                .filter(|a| !a.is_empty())
                .collect();
            for leader in leaders {
                let asked = async {
                    let mut at = TopicServiceClient::new(connect(&leader).await?);
                    anyhow::Ok(
                        at.describe_topic(request(pb::DescribeTopicRequest { name: name.clone() }, key)?)
                            .await?
                            .into_inner(),
                    )
                };
                match asked.await {
                    Ok(exact) => {
                        for p in &mut d.partitions {
                            if p.leader_address == leader
                                && let Some(e) = exact.partitions.iter().find(|e| e.partition == p.partition)
                            {
                                p.log_start_offset = e.log_start_offset;
                                p.high_watermark = e.high_watermark;
                            }
                        }
                    }
                    Err(error) => eprintln!(
                        "note: {leader} did not answer ({error:#}); its partitions' figures are as last published"
                    ),
                }
            }
            let t = d.topic.context("no topic in response")?;
            let c = t.config.unwrap_or_default();
            println!(
                "topic {}: {} partitions, retention {} ms / {} bytes, segments {} bytes / {} ms",
                t.name, c.partitions, c.retention_ms, c.retention_bytes, c.segment_bytes, c.segment_ms
            );
            println!(
                "{:>9}  {:<24}  {:>6}  {:>12}  {:>14}",
                "PARTITION", "LEADER", "EPOCH", "LOG START", "HIGH WATERMARK"
            );
            for p in d.partitions {
                let leader = if p.leader_address.is_empty() {
                    "-".to_owned()
                } else {
                    p.leader_address
                };
                println!(
                    "{:>9}  {:<24}  {:>6}  {:>12}  {:>14}",
                    p.partition, leader, p.lease_epoch, p.log_start_offset, p.high_watermark
                );
            }
        }
        TopicsCommand::Delete { name } => {
            client
                .delete_topic(request(pb::DeleteTopicRequest { name: name.clone() }, key)?)
                .await?;
            println!("deleted topic {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `cairn produce`: one record per stdin line through the producer
/// library (batched, idempotent, durable acks), reporting what was delivered.
pub async fn produce(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let mut builder = Producer::builder().bootstrap([addr(&args.target)]);
    if let Some(key) = &args.target.api_key {
        builder = builder.api_key(key.clone());
    }
    let producer = builder.build()?;
    let mut pending = std::collections::VecDeque::new();
    let (mut delivered, mut failed) = (0u64, 0u64);
    let mut settle = |result: Result<cairn_producer::RecordMetadata, cairn_producer::ProduceError>| match result {
        Ok(_) => delivered += 1,
        Err(e) => {
            if failed == 0 {
                eprintln!("error: {e}");
            }
            failed += 1;
        }
    };
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let split = args.key_separator.as_deref().and_then(|sep| line.split_once(sep));
        let mut record = match split {
            Some((k, v)) => ProducerRecord::new(&args.topic, v.to_owned()).key(k.to_owned()),
            None => ProducerRecord::new(&args.topic, line),
        };
        if let Some(p) = args.partition {
            record = record.partition(p);
        }
        match producer.send(record).await {
            Ok(delivery) => pending.push_back(delivery),
            Err(e) => settle(Err(e)),
        }
        if pending.len() >= 100_000
            && let Some(d) = pending.pop_front()
        {
            settle(d.await);
        }
    }
    producer.flush().await;
    for d in pending {
        settle(d.await);
    }
    producer.close().await;
    eprintln!("delivered {delivered} records to {}; {failed} failed", args.topic);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
