//! Small domain types instead of tuples: which partition, which tenure, which
//! segment object.

use std::fmt;

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: String,
    pub partition: u32,
}

impl PartitionId {
    /// Partition `partition` of `topic`.
    pub fn new(topic: &str, partition: u32) -> Self {
        PartitionId {
            topic: topic.to_owned(),
            partition,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Who holds a lease and at which epoch: what every fenced metadata update
/// is guarded by (`holder = me AND epoch = mine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken {
    pub holder: String,
    pub epoch: u64,
}

/// The object key of a segment: `topic/partition/BASE-NEXT-eEPOCH.seg`, with
/// zero-padded offsets so keys list in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentKey {
    pub topic: String,
    pub partition: u32,
    pub base: u64,
    pub next: u64,
    pub epoch: u64,
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{:020}-{:020}-e{}.seg",
            self.topic, self.partition, self.base, self.next, self.epoch
        )
    }
}

impl SegmentKey {
    /// Parses a key made by `Display`; `None` for anything else.
    pub fn parse(key: &str) -> Option<SegmentKey> {
        let mut parts = key.rsplitn(3, '/');
        let name = parts.next()?.strip_suffix(".seg")?;
        let partition = parts.next()?.parse().ok()?;
        let topic = parts.next()?;
        let (offsets, epoch) = name.split_once("-e")?;
        let (base, next) = offsets.split_once('-')?;
        Some(SegmentKey {
            topic: topic.to_owned(),
            partition,
            base: base.parse().ok()?,
            next: next.parse().ok()?,
            epoch: epoch.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_keys_print_and_parse_back() {
        let key = SegmentKey {
            topic: "clicks.v2".into(),
            partition: 3,
            base: 100,
            next: 200,
            epoch: 7,
        };
        let text = key.to_string();
        assert_eq!(text, "clicks.v2/3/00000000000000000100-00000000000000000200-e7.seg");
        assert_eq!(SegmentKey::parse(&text), Some(key));
        for bad in [
            "t/0/x.seg",
            "t/0/1-2.seg",
            "t/0/1-2-e.seg",
            "t/0/1-2-e3.txt",
            "",
            "0/1-2-e3.seg",
            "t/x/1-2-e3.seg",
        ] {
            assert_eq!(SegmentKey::parse(bad), None, "{bad}");
        }
        assert_eq!(PartitionId::new("t", 4).to_string(), "t/4");
    }
}
