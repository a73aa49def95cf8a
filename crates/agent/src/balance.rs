//! Which partitions this agent should take, and whether to hand one back:
//! the lease loop's decision as a pure function of what the metadata says,
//! unit-tested rule by rule (the shape of the producer's `Pipeline`).
//!
//! The rules:
//! - A lease this agent holds in metadata but does not serve (a restart, a
//!   partition that was stuck) is reclaimed first, whatever the share.
//! - A lease another agent holds and has not let expire is never taken.
//! - A free or expired lease left dirty by another holder (acknowledged
//!   records not in object storage) is taken only under unclean takeover.
//! - Free leases are taken up to this agent's share: the ceiling of
//!   partitions / live agents, or only the floor while another live agent
//!   has less than the floor (the rest are left for it).
//! - While another live agent has less than the floor and this one more,
//!   this one hands one partition back per round, so newcomers get work and
//!   nobody drops below the floor.
//! - Candidates are ordered by a hash of (agent, partition), different per
//!   agent, so agents starting together spread out instead of colliding.

use std::collections::HashSet;

use crate::{ids::PartitionId, meta::LeaseRow};

/// What the lease loop knows at the start of a round.
#[derive(Debug)]
pub struct View<'a> {
    /// This agent's id.
    pub me: &'a str,
    /// Every lease row.
    pub leases: &'a [LeaseRow],
    /// Ids of the live agents (this one included).
    pub live: &'a [String],
    /// The database's clock, unix ms.
    pub now: i64,
    /// Partitions this agent serves now.
    pub serving: &'a HashSet<PartitionId>,
    /// Whether dirty partitions of other holders may be taken.
    pub unclean: bool,
}

/// What to do this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Leases that are this agent's in metadata: take them back.
    pub reclaim: Vec<PartitionId>,
    /// Free leases to take, in order, at most this many succeeding counts.
    pub take: Vec<PartitionId>,
    /// How many of `take` may be taken (the share minus what is held).
    pub room: usize,
    /// A partition to hand to a less loaded agent.
    pub give_back: Option<PartitionId>,
}

/// The order candidates are tried in: differs per agent.
pub fn spread(agent: &str, id: &PartitionId) -> u32 {
    crc32fast::hash(format!("{agent}/{}/{}", id.topic, id.partition).as_bytes())
}

/// Decides a round.
pub fn plan(view: &View<'_>) -> Plan {
    let me = view.me;
    let live = view.live.len().max(1);
    let total = view.leases.len();
    let floor = total / live;
    let alive = |l: &LeaseRow| l.expires_at > view.now;
    let held_by = |agent: &str| {
        view.leases
            .iter()
            .filter(|l| l.holder.as_deref() == Some(agent) && alive(l))
            .count()
    };
    let starved = view.live.iter().any(|a| a != me && held_by(a) < floor);
    let share = if starved { floor.max(1) } else { total.div_ceil(live) };
    let id = |l: &LeaseRow| PartitionId::new(&l.topic, l.partition);

    let mut reclaim: Vec<PartitionId> = view
        .leases
        .iter()
        .filter(|l| l.holder.as_deref() == Some(me))
        .map(id)
        .filter(|p| !view.serving.contains(p))
        .collect();
    reclaim.sort_by_key(|p| spread(me, p));

    let mut take: Vec<PartitionId> = view
        .leases
        .iter()
        .filter(|l| l.holder.as_deref() != Some(me))
        .filter(|l| l.holder.is_none() || !alive(l))
        .filter(|l| !l.dirty || view.unclean || l.holder.is_none())
        .map(id)
        .filter(|p| !view.serving.contains(p))
        .collect();
    take.sort_by_key(|p| spread(me, p));

    let held = view.serving.len() + reclaim.len();
    let give_back = (starved && held > floor)
        .then(|| view.serving.iter().max_by_key(|p| spread(me, p)).cloned())
        .flatten();
    Plan {
        room: if give_back.is_some() {
            0
        } else {
            share.saturating_sub(held)
        },
        reclaim,
        take,
        give_back,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn lease(partition: u32, holder: Option<&str>, alive: bool, dirty: bool) -> LeaseRow {
        LeaseRow {
            topic: "t".into(),
            partition,
            holder: holder.map(str::to_owned),
            epoch: 1,
            expires_at: if alive { NOW + 5_000 } else { NOW - 1 },
            dirty,
            high_watermark: 0,
            log_start_offset: 0,
            committed_offset: 0,
        }
    }

    fn free(n: u32) -> Vec<LeaseRow> {
        (0..n).map(|p| lease(p, None, false, false)).collect()
    }

    fn ids(plan: &[PartitionId]) -> Vec<u32> {
        let mut v: Vec<u32> = plan.iter().map(|p| p.partition).collect();
        v.sort_unstable();
        v
    }

    fn view<'a>(
        me: &'a str,
        leases: &'a [LeaseRow],
        live: &'a [String],
        serving: &'a HashSet<PartitionId>,
    ) -> View<'a> {
        View {
            me,
            leases,
            live,
            now: NOW,
            serving,
            unclean: false,
        }
    }

    fn agents(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_agent_alone_takes_every_free_partition() {
        let leases = free(4);
        let live = agents(&["a"]);
        let none = HashSet::new();
        let plan = plan(&view("a", &leases, &live, &none));
        assert_eq!(
            (ids(&plan.take), plan.room, plan.give_back),
            (vec![0, 1, 2, 3], 4, None)
        );
    }

    #[test]
    fn free_partitions_are_taken_up_to_the_share_leaving_the_floor_for_a_starved_agent() {
        let leases = free(5);
        let live = agents(&["a", "b"]);
        let none = HashSet::new();
        let plan1 = plan(&view("a", &leases, &live, &none));
        assert_eq!(plan1.room, 2, "b has less than the floor of 2: a takes only the floor");
        assert_eq!(plan1.take.len(), 5, "candidates in order; the node stops at room");
        let mut leases = free(5);
        leases[0] = lease(0, Some("b"), true, false);
        leases[1] = lease(1, Some("b"), true, false);
        let plan2 = plan(&view("a", &leases, &live, &none));
        assert_eq!(plan2.room, 3, "nobody starved: the ceiling, 5 / 2 rounded up");
        assert_eq!(ids(&plan2.take), vec![2, 3, 4]);
    }

    #[test]
    fn this_agents_own_leases_are_reclaimed_first_whatever_the_share() {
        let mut leases: Vec<LeaseRow> = (0..3).map(|p| lease(p, Some("a"), false, true)).collect();
        leases.push(lease(3, None, false, false));
        let live = agents(&["a", "b", "c", "d"]);
        let none = HashSet::new();
        let plan = plan(&view("a", &leases, &live, &none));
        assert_eq!(
            ids(&plan.reclaim),
            vec![0, 1, 2],
            "even dirty and expired: they are ours"
        );
        assert_eq!(plan.room, 0, "already past the share of 1");
    }

    #[test]
    fn a_live_lease_of_another_agent_is_never_taken() {
        let leases = vec![lease(0, Some("b"), true, false), lease(1, Some("b"), false, false)];
        let live = agents(&["a", "b"]);
        let none = HashSet::new();
        let plan = plan(&view("a", &leases, &live, &none));
        assert_eq!(ids(&plan.take), vec![1], "only the expired one");
    }

    #[test]
    fn a_dirty_partition_of_another_holder_is_taken_only_under_unclean_takeover() {
        let leases = vec![lease(0, Some("b"), false, true)];
        let live = agents(&["a"]);
        let none = HashSet::new();
        assert!(plan(&view("a", &leases, &live, &none)).take.is_empty());
        let unclean = View {
            unclean: true,
            ..view("a", &leases, &live, &none)
        };
        assert_eq!(ids(&plan(&unclean).take), vec![0]);
    }

    #[test]
    fn partitions_already_served_here_are_neither_taken_nor_reclaimed() {
        let leases = vec![lease(0, Some("a"), true, false), lease(1, None, false, false)];
        let live = agents(&["a"]);
        let serving: HashSet<PartitionId> = [PartitionId::new("t", 0)].into();
        let plan = plan(&view("a", &leases, &live, &serving));
        assert!(plan.reclaim.is_empty());
        assert_eq!((ids(&plan.take), plan.room), (vec![1], 1));
    }

    #[test]
    fn while_another_agent_is_below_the_floor_one_partition_is_handed_back_and_none_taken() {
        let leases: Vec<LeaseRow> = (0..4).map(|p| lease(p, Some("a"), true, false)).collect();
        let live = agents(&["a", "b"]);
        let serving: HashSet<PartitionId> = (0..4).map(|p| PartitionId::new("t", p)).collect();
        let plan = plan(&view("a", &leases, &live, &serving));
        assert!(plan.give_back.is_some(), "b has 0 < floor 2");
        assert_eq!(plan.room, 0);
    }

    #[test]
    fn nobody_hands_back_below_the_floor() {
        let mut leases: Vec<LeaseRow> = (0..2).map(|p| lease(p, Some("a"), true, false)).collect();
        leases.extend((2..4).map(|p| lease(p, Some("b"), true, false)));
        leases.push(lease(4, Some("c"), true, false));
        let live = agents(&["a", "b", "c"]);
        let serving: HashSet<PartitionId> = (0..2).map(|p| PartitionId::new("t", p)).collect();
        // floor = 5 / 3 = 1; c has 1: nobody starved; a keeps its 2.
        assert_eq!(plan(&view("a", &leases, &live, &serving)).give_back, None);
        let leases: Vec<LeaseRow> = (0..2).map(|p| lease(p, Some("a"), true, false)).collect();
        let live = agents(&["a", "b"]);
        // floor = 1; b has 0 and a has 2 > 1: a gives one back, keeping the floor.
        assert!(plan(&view("a", &leases, &live, &serving)).give_back.is_some());
        let one: HashSet<PartitionId> = [PartitionId::new("t", 0)].into();
        let leases = vec![lease(0, Some("a"), true, false)];
        // floor = 0: nothing to give.
        assert_eq!(plan(&view("a", &leases, &live, &one)).give_back, None);
    }

    #[test]
    fn agents_try_candidates_in_different_orders() {
        let leases = free(16);
        let live = agents(&["a", "b"]);
        let none = HashSet::new();
        let a = plan(&view("agent-a", &leases, &live, &none)).take;
        let b = plan(&view("agent-b", &leases, &live, &none)).take;
        assert_ne!(a, b);
    }
}
