//! A few HTTP/2 connections per agent, shared by every partition the agent
//! leads. Calls rotate over them; each reconnects by itself after a failure
//! (tonic's lazy channel), and an agent's connections unused for the idle
//! timeout are closed.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use cairn_client::{ClientConfig, channel as client};
use tonic::transport::Channel;

use crate::error::ProduceError;

struct Slot {
    channels: Vec<Channel>,
    next: usize,
    last_used: Instant,
}

/// Connections by agent address.
pub struct Pool {
    client: ClientConfig,
    per_agent: usize,
    idle_timeout: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("agents", &self.agents()).finish()
    }
}

impl Pool {
    pub fn new(per_agent: usize, idle_timeout: Duration, connect_timeout: Duration) -> Self {
        Pool {
            client: ClientConfig {
                connect_timeout: connect_timeout.max(Duration::from_millis(1)),
                ..ClientConfig::default()
            },
            per_agent: per_agent.max(1),
            idle_timeout,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A connection to `address`, opened on first use; calls rotate over the agent's connections.
    pub fn channel(&self, address: &str) -> Result<Channel, ProduceError> {
        self.pick(address, None)
    }

    /// The connection to `address` that calls with this `affinity` always use
    /// (one partition's requests share a connection, so they usually arrive in order).
    pub fn channel_for(&self, address: &str, affinity: u32) -> Result<Channel, ProduceError> {
        self.pick(address, Some(affinity as usize))
    }

    fn pick(&self, address: &str, affinity: Option<usize>) -> Result<Channel, ProduceError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !slots.contains_key(address) {
            let channels = (0..self.per_agent)
                .map(|_| client::connect_lazy(address, &self.client))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ProduceError::Rejected {
                    code: tonic::Code::InvalidArgument,
                    message: format!("agent address {address:?}: {e}"),
                })?;
            slots.insert(
                address.to_owned(),
                Slot {
                    channels,
                    next: 0,
                    last_used: Instant::now(),
                },
            );
        }
        let slot = slots.get_mut(address).ok_or(ProduceError::Closed)?;
        slot.last_used = Instant::now();
        let index = match affinity {
            Some(a) => a % slot.channels.len(),
            None => {
                slot.next = (slot.next + 1) % slot.channels.len();
                slot.next
            }
        };
        Ok(slot.channels[index].clone())
    }

    /// Closes the connections of agents unused for the idle timeout; returns how many agents.
    pub fn close_idle(&self) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let before = slots.len();
        slots.retain(|_, slot| slot.last_used.elapsed() < self.idle_timeout);
        before - slots.len()
    }

    /// Agents with open connections.
    pub fn agents(&self) -> Vec<String> {
        let mut agents: Vec<String> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        agents.sort();
        agents
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn connections_are_shared_per_agent_and_idle_ones_close() {
        let pool = Pool::new(2, Duration::from_millis(50), Duration::from_secs(1));
        pool.channel("127.0.0.1:1").unwrap();
        pool.channel("127.0.0.1:1").unwrap();
        pool.channel("127.0.0.1:2").unwrap();
        assert_eq!(pool.agents(), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(pool.close_idle(), 0);
        tokio::time::sleep(Duration::from_millis(60)).await;
        pool.channel("127.0.0.1:2").unwrap();
        assert_eq!(pool.close_idle(), 1);
        assert_eq!(pool.agents(), ["127.0.0.1:2"]);
        assert!(pool.channel("not a uri\n").is_err());
    }
}
