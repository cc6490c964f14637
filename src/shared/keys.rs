//! Every Redis key herald reads or writes, named in one place.
//!
//! Keys that one script touches together share a hash tag (the part in `{}`), so
//! every script stays in one slot and is legal on Redis Cluster:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `{P:pN}:events` | stream | events of partition N, one entry per event |
//! | `{P:pN}:dedup:<event id>` | string | `<digest> <stream id>`, for idempotent publishes (expires) |
//! | `{P:pN}:dlq` | stream | dead letters of partition N: the original fields plus why |
//! | `{P:pN}:outcomes:<event id>` | hash | subscription id → the device's state for one event: `delivered`, `gone`, `dead`, `superseded`, `expired` (settled), `pushing <holder> <until ms>` (claimed), `failed <status> <error>` (last attempt failed) (expires) |
//! | `{P:pN}:retry-at` | hash | stream id → `<unix ms> <counted\|held> <deliveries>`: not before when a pending entry is retried, and whether its last attempt counted |
//! | `{P:pN}:tombstone:<stream id>` | string | set once a deleted-while-pending entry got its tombstone (expires) |
//! | `{P:pN}:lease:<stream id>` | string | the consumer processing that entry right now (expires; heartbeats extend it); `ended <holder>` for a lease's time once that attempt released it, which readers take for free |
//! | `{P:pN}:order-lock:<key digest>` | string | the stream id of the event of that key being processed (expires; heartbeats extend it); `ended <holder>` (free) for a lease's time after its release |
//! | `{P:pN}:order:<key digest>` | hash | subscription id → `<due ms> <event id>` of the newest event of that key claimed for the device (expires) |
//! | `{P:pN}:scheduled` | sorted set | event id → unix ms of `deliver_at`, for events not due yet |
//! | `{P:pN}:scheduled-events` | hash | event id → the entry's fields (JSON array), until it is due |
//! | `{P:pN}:held:<user>` | sorted set | event id → unix ms it expires, direct events waiting for the user's first subscription (expires after its last) |
//! | `{P:pN}:held-events` | hash | event id → `{"user":…,"fields":[…]}` of a held event |
//! | `{P:pN}:held-expiry` | sorted set | event id → unix ms it expires, over all users (for the sweep) |
//! | `{P:pN}:held-expired` | string | count of held events that expired before their user subscribed |
//! | `{P:subs}:sub:<id>` | hash | one push subscription: endpoint, keys, user, interests |
//! | `{P:subs}:user:<user>` | set | subscription ids of one user |
//! | `{P:subs}:all` | set | every subscription id |
//! | `{P:subs}:version` | string | incremented on every subscription change |
//! | `{P:subs}:changes` | stream | one entry per change, `v` (the version it made) and `id` (the subscription): workers follow it to keep their routing index current (capped near [`SUBSCRIPTION_CHANGES_KEPT`] entries) |
//! | `{P:ops}:push-state` | hash | worker consumer → JSON of its open breakers and subscriptions waiting out a `429`, refreshed every `admin.sample_interval` |
//!
//! `P` is `redis.key_prefix` (default `herald`). On a Redis Cluster with more
//! than one partition, `pN` becomes `pN.S`: the smallest number `S` that puts
//! partition N's hash tag in the N-th of `redis.partitions` equal ranges of
//! the 16,384 slots, so the partitions spread evenly over masters that hold
//! equal ranges (what `redis-cli --cluster create` makes). [`Keys::tag`] says
//! which tag a partition has.

/// About how many subscription changes `{P:subs}:changes` keeps (`MAXLEN ~`): a
/// worker further behind than this rebuilds its routing index from every subscription.
pub const SUBSCRIPTION_CHANGES_KEPT: u32 = 10_000;

/// The key names for one deployment (one `redis.key_prefix`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u32,
    /// Each partition's hash tag, without its braces.
    tags: std::sync::Arc<[String]>,
}

/// Slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

impl Keys {
    /// `spread`: choose the partitions' tags so they spread over a cluster's slots.
    pub fn new(prefix: &str, partitions: u32, spread: bool) -> Keys {
        let partitions = partitions.max(1);
        let tags = (0..partitions)
            .map(|p| match spread && partitions > 1 {
                true => spread_tag(prefix, p, partitions),
                false => format!("{prefix}:p{p}"),
            })
            .collect();
        Keys {
            prefix: prefix.to_string(),
            partitions,
            tags,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The hash tag of a partition's keys, braces included: `{herald:p0}`.
    pub fn tag(&self, partition: u32) -> String {
        format!("{{{}}}", self.tags[partition as usize])
    }

    /// The stream of one partition.
    pub fn stream(&self, partition: u32) -> String {
        format!("{}:events", self.tag(partition))
    }

    /// Every partition's stream, in partition order.
    pub fn streams(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.stream(p)).collect()
    }

    /// The dedup record of an event id; same slot as the stream it guards.
    pub fn dedup(&self, partition: u32, event_id: &str) -> String {
        format!("{}:dedup:{event_id}", self.tag(partition))
    }

    /// The dead-letter stream of one partition; same slot as the stream.
    pub fn dead_letters(&self, partition: u32) -> String {
        format!("{}:dlq", self.tag(partition))
    }

    /// Per-subscription outcomes of one event: what stops a retry from pushing twice.
    pub fn outcomes(&self, partition: u32, event_id: &str) -> String {
        format!("{}:outcomes:{event_id}", self.tag(partition))
    }

    /// The outcomes of the entry with these fields: its event's, or for a forced
    /// replay copy (field `replay_run`) its run's, under which devices are tracked afresh.
    pub fn entry_outcomes(
        &self,
        partition: u32,
        event_id: &str,
        fields: &std::collections::HashMap<String, String>,
    ) -> String {
        match fields.get(crate::shared::stream::REPLAY_RUN) {
            Some(run) => self.outcomes(partition, &format!("{event_id}:replay:{run}")),
            None => self.outcomes(partition, event_id),
        }
    }

    /// Not-before times (`Retry-After`) of pending entries of one partition.
    pub fn retry_at(&self, partition: u32) -> String {
        format!("{}:retry-at", self.tag(partition))
    }

    /// Marks that a deleted-while-pending entry was recorded, so it is recorded once.
    pub fn tombstone(&self, partition: u32, stream_id: &str) -> String {
        format!("{}:tombstone:{stream_id}", self.tag(partition))
    }

    /// Which entry of an ordering key is being processed right now.
    pub fn order_lock(&self, partition: u32, key_digest: &str) -> String {
        format!("{}:order-lock:{key_digest}", self.tag(partition))
    }

    /// Who is processing an entry right now; same slot as the stream.
    pub fn lease(&self, partition: u32, stream_id: &str) -> String {
        format!("{}:lease:{stream_id}", self.tag(partition))
    }

    /// The newest event of one ordering key (digested) claimed per device, in the key's partition.
    pub fn order(&self, partition: u32, key_digest: &str) -> String {
        format!("{}:order:{key_digest}", self.tag(partition))
    }

    /// Events of one partition waiting for their `deliver_at`, scored by it.
    pub fn scheduled(&self, partition: u32) -> String {
        format!("{}:scheduled", self.tag(partition))
    }

    /// The stream fields of the scheduled events of one partition.
    pub fn scheduled_events(&self, partition: u32) -> String {
        format!("{}:scheduled-events", self.tag(partition))
    }

    /// Direct events held for one user who has no subscription yet.
    pub fn held(&self, partition: u32, user: &str) -> String {
        format!("{}:held:{user}", self.tag(partition))
    }

    /// The fields and user of every held event of one partition.
    pub fn held_events(&self, partition: u32) -> String {
        format!("{}:held-events", self.tag(partition))
    }

    /// Every held event of one partition by expiry time.
    pub fn held_expiry(&self, partition: u32) -> String {
        format!("{}:held-expiry", self.tag(partition))
    }

    /// How many held events of one partition expired unsent.
    pub fn held_expired(&self, partition: u32) -> String {
        format!("{}:held-expired", self.tag(partition))
    }

    /// The partition a stream key belongs to, if it is one of ours.
    pub fn partition_of(&self, stream: &str) -> Option<u32> {
        (0..self.partitions).find(|p| self.stream(*p) == stream)
    }

    pub fn subscription(&self, id: &str) -> String {
        format!("{{{}:subs}}:sub:{id}", self.prefix)
    }

    pub fn user_subscriptions(&self, user: &str) -> String {
        format!("{}{user}", self.user_subscriptions_prefix())
    }

    /// What precedes the user in [`Keys::user_subscriptions`], for scripts that build it.
    pub fn user_subscriptions_prefix(&self) -> String {
        format!("{{{}:subs}}:user:", self.prefix)
    }

    pub fn all_subscriptions(&self) -> String {
        format!("{{{}:subs}}:all", self.prefix)
    }

    pub fn subscriptions_version(&self) -> String {
        format!("{{{}:subs}}:version", self.prefix)
    }

    /// Every subscription change, in order; see [`SUBSCRIPTION_CHANGES_KEPT`].
    pub fn subscription_changes(&self) -> String {
        format!("{{{}:subs}}:changes", self.prefix)
    }

    /// What each worker reports of its push services: open breakers, waiting subscriptions.
    pub fn push_state(&self) -> String {
        format!("{{{}:ops}}:push-state", self.prefix)
    }

    /// The partition of an event: a stable hash of its ordering key, or of its id when it has none.
    pub fn partition_for(&self, ordering_key: &str) -> u32 {
        if self.partitions == 1 {
            return 0;
        }
        // FNV-1a: stable across processes and versions, unlike std's RandomState.
        let mut hash: u32 = 0x811c_9dc5;
        for byte in ordering_key.bytes() {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % self.partitions
    }
}

/// Partition `p` of `n`'s tag on a cluster: `<prefix>:p<p>.<s>` with the
/// smallest `s` whose slot falls in the `p`-th of `n` equal slot ranges.
fn spread_tag(prefix: &str, p: u32, n: u32) -> String {
    let low = u32::from(SLOTS) * p / n;
    let high = u32::from(SLOTS) * (p + 1) / n;
    (0u32..)
        .map(|s| format!("{prefix}:p{p}.{s}"))
        .find(|tag| (low..high).contains(&u32::from(slot_of(tag.as_bytes()))))
        .expect("every range of at least 16 slots is hit within a few thousand tries")
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, mod 16,384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tag = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// The hash tag of a key: what Redis Cluster hashes to choose its slot.
pub fn hash_tag(key: &str) -> &str {
    match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_and_its_dedup_records_share_a_slot() {
        let keys = Keys::new("herald", 4, false);
        for p in 0..4 {
            let tag = hash_tag(&keys.stream(p)).to_string();
            assert_eq!(hash_tag(&keys.dedup(p, "evt-1")), tag);
            assert_eq!(hash_tag(&keys.dead_letters(p)), tag);
            assert_eq!(hash_tag(&keys.outcomes(p, "evt-1")), tag);
            assert_eq!(hash_tag(&keys.retry_at(p)), tag);
            assert_eq!(hash_tag(&keys.tombstone(p, "1-0")), tag);
            assert_eq!(hash_tag(&keys.order(p, "ab12")), tag);
            assert_eq!(hash_tag(&keys.lease(p, "1-0")), tag);
            assert_eq!(hash_tag(&keys.order_lock(p, "ab12")), tag);
            assert_eq!(hash_tag(&keys.scheduled(p)), tag);
            assert_eq!(hash_tag(&keys.scheduled_events(p)), tag);
            assert_eq!(hash_tag(&keys.held(p, "u-1")), tag);
            assert_eq!(hash_tag(&keys.held_events(p)), tag);
            assert_eq!(hash_tag(&keys.held_expiry(p)), tag);
            assert_eq!(hash_tag(&keys.held_expired(p)), tag);
            assert_eq!(keys.partition_of(&keys.stream(p)), Some(p));
        }
        assert_ne!(hash_tag(&keys.stream(0)), hash_tag(&keys.stream(1)));
    }

    #[test]
    fn subscription_keys_share_a_slot() {
        let keys = Keys::new("t1", 1, false);
        let tag = hash_tag(&keys.all_subscriptions()).to_string();
        assert_eq!(hash_tag(&keys.subscription("abc")), tag);
        assert_eq!(hash_tag(&keys.user_subscriptions("u-42")), tag);
        assert_eq!(hash_tag(&keys.subscriptions_version()), tag);
        assert_eq!(hash_tag(&keys.subscription_changes()), tag);
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        let keys = Keys::new("herald", 8, false);
        let p = keys.partition_for("12가3456");
        assert_eq!(p, keys.partition_for("12가3456"));
        assert!(p < 8);
        assert_eq!(Keys::new("herald", 1, false).partition_for("anything"), 0);
    }

    #[test]
    fn slots_are_those_redis_computes() {
        // Values from CLUSTER KEYSLOT on redis-server 7.0.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(slot_of(b"123456789"), 0x31c3 % SLOTS);
    }

    #[test]
    fn spread_partitions_take_one_equal_range_of_slots_each() {
        for n in [2, 3, 6, 16, 1024] {
            let keys = Keys::new("herald", n, true);
            for p in 0..n {
                let slot = u32::from(slot_of(keys.stream(p).as_bytes()));
                let range = u32::from(SLOTS) * p / n..u32::from(SLOTS) * (p + 1) / n;
                assert!(range.contains(&slot), "partition {p} of {n}: slot {slot}");
                assert_eq!(keys.partition_of(&keys.stream(p)), Some(p));
            }
        }
        // One partition, or one Redis: the plain tags.
        assert_eq!(Keys::new("herald", 1, true).stream(0), "{herald:p0}:events");
        assert_eq!(
            Keys::new("herald", 4, false).stream(3),
            "{herald:p3}:events"
        );
    }
}
