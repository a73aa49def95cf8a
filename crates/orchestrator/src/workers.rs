//! `cairn.orchestrator.v1.WorkerService/Connect`: one stream per worker. The
//! hello is checked and its templates registered here; everything after it
//! is handed to the engine, which alone decides what the worker runs.

use std::{
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
};

use cairn_proto::cairn::orchestrator::v1::{
    self as wpb, connect_request, connect_response, worker_service_server::WorkerService,
};
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::{
    engine::{Command, EngineHandle, WorkerJoin, now_ms},
    template::Template,
};

type Outbound = Pin<Box<dyn Stream<Item = Result<wpb::ConnectResponse, Status>> + Send>>;

/// The worker stream service.
pub struct Workers {
    engine: EngineHandle,
    max_concurrency: u32,
    next_session: AtomicU64,
}

impl Workers {
    pub fn new(engine: EngineHandle, max_concurrency: u32) -> Self {
        Workers {
            engine,
            max_concurrency,
            next_session: AtomicU64::new(1),
        }
    }
}

fn valid_handler(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// The hello's templates, parsed, each checked to use only handlers the worker serves.
fn check_hello(hello: &wpb::Hello, max_concurrency: u32) -> Result<Vec<Template>, Status> {
    if hello.concurrency == 0 || hello.concurrency > max_concurrency {
        return Err(Status::invalid_argument(format!(
            "hello.concurrency must be 1..={max_concurrency}, not {}",
            hello.concurrency
        )));
    }
    if hello.handlers.is_empty() {
        return Err(Status::invalid_argument(
            "hello.handlers: a worker serves at least one handler",
        ));
    }
    if let Some(bad) = hello.handlers.iter().find(|h| !valid_handler(h)) {
        return Err(Status::invalid_argument(format!(
            "hello.handlers: {bad:?} must be 1-128 characters of letters, digits, '_', '-', '.', ':'"
        )));
    }
    let mut templates = Vec::with_capacity(hello.templates.len());
    for (i, source) in hello.templates.iter().enumerate() {
        let t =
            Template::from_yaml(source).map_err(|e| Status::invalid_argument(format!("hello.templates[{i}]: {e}")))?;
        if let Some(step) = t.steps.iter().find(|s| !hello.handlers.contains(&s.handler)) {
            return Err(Status::invalid_argument(format!(
                "hello.templates[{i}] ({}/{}): step {} uses handler {:?}, which this worker does not serve",
                t.namespace, t.name, step.name, step.handler
            )));
        }
        templates.push(t);
    }
    Ok(templates)
}

#[tonic::async_trait]
impl WorkerService for Workers {
    type ConnectStream = Outbound;

    async fn connect(
        &self,
        request: Request<Streaming<wpb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its hello"))?;
        let Some(connect_request::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument("the first message must be a hello"));
        };
        let templates = check_hello(&hello, self.max_concurrency)?;
        let registered = self.engine.ask(|reply| Command::Register { templates, reply }).await?;
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let worker_uuid = Uuid::new_v4().to_string();
        let capacity = usize::try_from(hello.concurrency).unwrap_or(1);
        // Room for every assignment the worker may hold plus their acks and
        // cancels: the engine never waits on a worker.
        let (tx, rx) = mpsc::channel(capacity * 3 + 64);
        let config = &self.engine.config;
        let welcome = wpb::ConnectResponse {
            kind: Some(connect_response::Kind::Welcome(wpb::Welcome {
                worker_uuid: worker_uuid.clone(),
                lease_ms: u64::try_from(config.lease.as_millis()).unwrap_or(u64::MAX),
                heartbeat_interval_ms: u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
                templates: registered,
            })),
        };
        tx.try_send(Ok(welcome))
            .map_err(|_| Status::internal("cannot queue the welcome"))?;
        let name = if hello.worker_name.is_empty() {
            format!("worker-{session}")
        } else {
            hello.worker_name.chars().take(128).collect()
        };
        self.engine
            .commands
            .send(Command::Join(Box::new(WorkerJoin {
                session,
                worker_uuid,
                name,
                handlers: hello.handlers,
                capacity,
                outbound: tx.clone(),
            })))
            .await
            .map_err(|_| Status::unavailable("the orchestrator is stopping"))?;
        let commands = self.engine.commands.clone();
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, session, "worker stream ended with an error");
                        break;
                    }
                };
                let command = match message.kind {
                    Some(connect_request::Kind::Started(s)) => Command::Started {
                        session,
                        assignment: s.assignment_id,
                    },
                    Some(connect_request::Kind::Heartbeat(h)) => {
                        let ack = wpb::ConnectResponse {
                            kind: Some(connect_response::Kind::HeartbeatAck(wpb::HeartbeatAck {
                                server_time_ms: now_ms(),
                            })),
                        };
                        let _ = tx.try_send(Ok(ack));
                        Command::Heartbeat {
                            session,
                            assignments: h.assignment_ids,
                        }
                    }
                    Some(connect_request::Kind::Result(result)) => Command::Result { session, result },
                    Some(connect_request::Kind::Drain(_)) => Command::Drain { session },
                    Some(connect_request::Kind::Hello(_)) | None => {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "only the first message may be a hello, and every message needs a kind",
                            )))
                            .await;
                        break;
                    }
                };
                if commands.send(command).await.is_err() {
                    return;
                }
            }
            let _ = commands.send(Command::Leave { session }).await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}
