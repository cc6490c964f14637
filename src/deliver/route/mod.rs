//! Who gets an event.
//!
//! - **Direct**: an event with `user` goes to every subscription of that user
//!   (each of their devices), and to nobody else.
//! - **Topic**: otherwise, to every subscription with a topic pattern that
//!   matches the event's `topic` (`*` one word, `#` zero or more; `#` alone is
//!   fan-out to everyone) and whose header filter, if any, matches its headers.
//!   A subscription with a header filter and no topics matches any topic.
//!
//! Both use an in-memory index of every subscription, never a read of Redis
//! per event. When the subscriptions' version counter moves, the index
//! follows the changes recorded since (`{P:subs}:changes`), reading again only
//! the subscriptions changed; it is rebuilt from all of them at start and when
//! it fell too far behind. Topic routing checks the version at most every
//! [`REFRESH_EVERY`]. A direct event is routed only with an index whose version
//! was confirmed after the event was read (one read of the version and the
//! last change serves every event read before it), so a device registered
//! before the event was published always gets it, as when each event read its
//! user's subscriptions from Redis. Subscriptions are changed through herald
//! (API, CLI), which records each change; a hand edit in Redis is seen at the
//! next rebuild (a worker's start), see README "Redis keys".

pub mod device;
pub mod trie;

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crate::shared::event::Event;
use crate::shared::keys::SUBSCRIPTION_CHANGES_KEPT;
use crate::shared::metrics;
use crate::shared::subscriptions::{
    HeaderFilter, MatchMode, Store, Subscription, Unreadable, NO_CHANGE_YET,
};
pub use device::Device;
use trie::PatternTrie;

/// How often a worker asks Redis whether subscriptions changed.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The devices an event is meant for.
#[derive(Debug, Default)]
pub struct Targets {
    /// Shared with the index: a fan-out to 100,000 devices does not copy them.
    pub devices: Vec<Arc<Device>>,
    /// Stored subscriptions that cannot be read back, with what is wrong with each.
    pub unreadable: Vec<Unreadable>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.unreadable.is_empty()
    }

    /// Every device, readable or not, one after the other.
    pub fn into_devices(self) -> Vec<Target> {
        let mut devices: Vec<Target> = self.devices.into_iter().map(Target::Device).collect();
        devices.extend(self.unreadable.into_iter().map(Target::Unreadable));
        devices
    }
}

/// One device an event is meant for.
#[derive(Debug, Clone)]
pub enum Target {
    Device(Arc<Device>),
    /// A stored subscription that cannot be read back (dead-lettered, never pushed).
    Unreadable(Unreadable),
}

impl Target {
    /// The subscription id.
    pub fn id(&self) -> &str {
        match self {
            Target::Device(device) => device.id(),
            Target::Unreadable(bad) => &bad.id,
        }
    }
}

/// Every subscription, by user, and those with interests indexed for matching.
///
/// Kept current by following the changes (one subscription re-read per
/// change) and rebuilt from every subscription only when the changes cannot be followed.
#[derive(Debug, Default, Clone)]
pub struct Index {
    /// The subscriptions' version this index reflects.
    version: i64,
    /// The last change read (a stream entry id): the next are read after it.
    cursor: String,
    /// Devices by slot; a removed one leaves `None` until the slots are compacted.
    slots: Vec<Option<Arc<Device>>>,
    /// The user of each slot's subscription ("" for none).
    owners: Vec<Box<str>>,
    /// Slots of each user's subscriptions.
    by_user: std::collections::HashMap<Box<str>, Vec<u32>>,
    /// Stored subscriptions that cannot be read (rare), by id: their user's
    /// direct events dead-letter them, as before.
    unreadable: std::collections::HashMap<String, Unreadable>,
    /// Slot of each live subscription, found by its id.
    by_id: HashTable<u32>,
    removed: usize,
    topics: PatternTrie,
    /// Subscriptions with a header filter and no topics: they match any topic.
    headers_only: Vec<u32>,
    hasher: RandomState,
}

impl Index {
    pub fn build(version: i64, all: impl IntoIterator<Item = Subscription>) -> Index {
        let mut index = Index {
            version,
            cursor: NO_CHANGE_YET.into(),
            ..Index::default()
        };
        for sub in all {
            index.add(sub);
        }
        index
    }

    /// Adds one subscription, replacing any with the same id; one with neither
    /// topics nor a header filter only takes direct events.
    pub fn add(&mut self, sub: Subscription) {
        self.remove(&sub.id);
        let i = self.slots.len() as u32;
        if !sub.topics.is_empty() || sub.headers.is_some() {
            for pattern in &sub.topics {
                self.topics.insert(pattern, i);
            }
            if sub.topics.is_empty() {
                self.headers_only.push(i);
            }
        }
        let owner: Box<str> = sub.user.as_deref().unwrap_or_default().into();
        if !owner.is_empty() {
            self.by_user.entry(owner.clone()).or_default().push(i);
        }
        self.owners.push(owner);
        self.slots.push(Some(Arc::new(Device::new(&sub))));
        self.index_id(i);
    }

    /// Records a stored subscription that cannot be read, replacing any with its id.
    pub fn add_unreadable(&mut self, bad: Unreadable) {
        self.remove(&bad.id);
        self.unreadable.insert(bad.id.clone(), bad);
    }

    /// A user's devices, and their subscriptions that cannot be read.
    pub fn for_user(&self, user: &str) -> Targets {
        let devices = self
            .by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.slots[i as usize].clone())
            .collect();
        let unreadable = self
            .unreadable
            .values()
            .filter(|bad| bad.user.as_deref() == Some(user))
            .cloned()
            .collect();
        Targets {
            devices,
            unreadable,
        }
    }

    /// Makes slot `i` findable by its device's id.
    fn index_id(&mut self, i: u32) {
        let Index {
            slots,
            by_id,
            hasher,
            ..
        } = self;
        by_id.insert_unique(hash_of(hasher, slots, i), i, |&slot| {
            hash_of(hasher, slots, slot)
        });
    }

    /// Removes the subscription with this id, if it is indexed.
    pub fn remove(&mut self, id: &str) {
        let hash = self.hasher.hash_one(id);
        let slots = &self.slots;
        let found = self.by_id.find_entry(hash, |&slot| {
            slots[slot as usize].as_ref().is_some_and(|d| d.id() == id)
        });
        if let Ok(entry) = found {
            let (slot, _) = entry.remove();
            self.slots[slot as usize] = None;
            self.removed += 1;
            let owner = std::mem::take(&mut self.owners[slot as usize]);
            if let Some(slots) = self.by_user.get_mut(&owner) {
                slots.retain(|&i| i != slot);
                if slots.is_empty() {
                    self.by_user.remove(&owner);
                }
            }
        }
        self.unreadable.remove(id);
        if self.removed > 1024 && self.removed > self.len() {
            self.compact();
        }
    }

    /// Drops the removed slots, renumbering the live ones everywhere.
    fn compact(&mut self) {
        let mut renumbered = vec![None; self.slots.len()];
        let mut live = Vec::with_capacity(self.len());
        let mut owners = Vec::with_capacity(self.len());
        for (old, (slot, owner)) in self.slots.drain(..).zip(self.owners.drain(..)).enumerate() {
            if let Some(device) = slot {
                renumbered[old] = Some(live.len() as u32);
                live.push(Some(device));
                owners.push(owner);
            }
        }
        self.slots = live;
        self.owners = owners;
        for slots in self.by_user.values_mut() {
            for i in slots.iter_mut() {
                *i = renumbered[*i as usize].expect("a user's slots are live");
            }
        }
        self.removed = 0;
        self.topics.renumber(|old| renumbered[old as usize]);
        self.headers_only
            .retain_mut(|i| match renumbered[*i as usize] {
                Some(new) => {
                    *i = new;
                    true
                }
                None => false,
            });
        self.by_id.clear();
        for i in 0..self.slots.len() as u32 {
            self.index_id(i);
        }
    }

    /// The devices a topic event goes to.
    pub fn route(&self, topic: &str, headers: &BTreeMap<String, String>) -> Vec<Arc<Device>> {
        let mut found = HashSet::new();
        self.topics.matches(topic, &mut found);
        found.extend(&self.headers_only);
        let mut ids: Vec<u32> = found.into_iter().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|i| self.slots[i as usize].as_ref())
            .filter(|d| d.headers().is_none_or(|f| headers_match(f, headers)))
            .cloned()
            .collect()
    }

    /// Subscriptions indexed.
    pub fn len(&self) -> usize {
        self.slots.len() - self.removed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn hash_of(hasher: &RandomState, slots: &[Option<Arc<Device>>], slot: u32) -> u64 {
    let device = slots[slot as usize]
        .as_ref()
        .expect("only live slots are in the id table");
    hasher.hash_one(device.id())
}

/// `all`: every value must equal the event's header; `any`: at least one must.
pub fn headers_match(filter: &HeaderFilter, headers: &BTreeMap<String, String>) -> bool {
    let mut checks = filter.values.iter().map(|(k, v)| headers.get(k) == Some(v));
    match filter.mode {
        MatchMode::All => checks.all(|ok| ok),
        MatchMode::Any => checks.any(|ok| ok),
    }
}

/// Where an index stands in the changes.
struct Head {
    version: i64,
    cursor: String,
}

struct Cached {
    index: Arc<Index>,
    /// When the last full check (version and last change) began.
    checked: Instant,
    /// When the last check that the index is current (full, or of the version alone) began.
    confirmed: Instant,
}

/// Finds target subscriptions. Cheap to clone; clones share the index.
#[derive(Clone)]
pub struct Router {
    store: Store,
    cache: Arc<Mutex<Option<Cached>>>,
    /// Serialises rebuilds, so a change does not make every task rebuild at once.
    rebuild: Arc<tokio::sync::Mutex<()>>,
}

impl Router {
    pub fn new(store: Store) -> Router {
        Router {
            store,
            cache: Arc::default(),
            rebuild: Arc::default(),
        }
    }

    /// The targets of `event`, whose entry was read at `read_at`.
    pub async fn targets(&self, event: &Event, read_at: Instant) -> anyhow::Result<Targets> {
        match &event.user {
            Some(user) => Ok(self.index_since(read_at).await?.for_user(user)),
            None => Ok(Targets {
                devices: self.index().await?.route(&event.topic, &event.headers),
                unreadable: Vec::new(),
            }),
        }
    }

    /// The index, confirmed current by a check that began after `since`:
    /// every subscription change made before then is in it. One check (a
    /// `GET` of the version) serves every caller whose `since` precedes it;
    /// when the version moved, the index is brought up to date first.
    async fn index_since(&self, since: Instant) -> anyhow::Result<Arc<Index>> {
        let confirmed = |cache: &Option<Cached>| {
            cache
                .as_ref()
                .filter(|c| c.confirmed >= since)
                .map(|c| c.index.clone())
        };
        if let Some(index) = confirmed(&self.cache.lock()) {
            return Ok(index);
        }
        let _one_at_a_time = self.rebuild.lock().await;
        if let Some(index) = confirmed(&self.cache.lock()) {
            return Ok(index);
        }
        let asked = Instant::now();
        // The version and the last change, as `refresh` compares them: after a
        // failover or a flush the version alone can come back to the same
        // number with other subscriptions behind it.
        let (version, last) = self.store.snapshot().await?;
        {
            let mut cache = self.cache.lock();
            if let Some(cached) = cache
                .as_mut()
                .filter(|c| c.index.version == version && c.index.cursor == last)
            {
                cached.confirmed = asked;
                return Ok(cached.index.clone());
            }
        }
        self.refresh().await
    }

    /// The cached index, if it was checked against the version less than `REFRESH_EVERY` ago.
    fn fresh(&self) -> Option<Arc<Index>> {
        self.cache
            .lock()
            .as_ref()
            .filter(|c| c.checked.elapsed() < REFRESH_EVERY)
            .map(|c| c.index.clone())
    }

    /// The current index: the cached one while the version has not moved,
    /// brought up to date from the changes since when it has, rebuilt from
    /// every subscription when those changes cannot be followed.
    pub async fn index(&self) -> anyhow::Result<Arc<Index>> {
        if let Some(index) = self.fresh() {
            return Ok(index);
        }
        let _one_at_a_time = self.rebuild.lock().await;
        // Another task may have refreshed it while this one waited.
        if let Some(index) = self.fresh() {
            return Ok(index);
        }
        self.refresh().await
    }

    /// Checks the version and the last change, and follows or rebuilds; the
    /// caller holds `rebuild`.
    async fn refresh(&self) -> anyhow::Result<Arc<Index>> {
        let asked = Instant::now();
        // The version and the last change together: after a flush or a failover
        // the version alone may come back to the same number with other contents.
        let (version, last) = self.store.snapshot().await?;
        // Only where the cached index stands: holding the index itself here
        // would make following the changes copy it.
        let head = self.cache.lock().as_ref().map(|c| Head {
            version: c.index.version,
            cursor: c.index.cursor.clone(),
        });
        let index = match head {
            Some(head) if head.version == version && head.cursor == last => self
                .cache
                .lock()
                .as_ref()
                .map(|c| c.index.clone())
                .expect("cached: only this task (holding rebuild) replaces it"),
            Some(head) if head.version < version => match self.catch_up(version).await? {
                Some(updated) => updated,
                None => self.rebuild().await?,
            },
            _ => self.rebuild().await?,
        };
        *self.cache.lock() = Some(Cached {
            index: index.clone(),
            checked: asked,
            confirmed: asked,
        });
        Ok(index)
    }

    /// The cached index with the changes after it applied, each subscription
    /// changed read again; `None` when they do not follow on from it: its last change
    /// is no longer there as it was (trimmed, or lost in a failover), a version
    /// was bumped without a change recorded (as a herald from before this
    /// stream did, or a hand edit followed by `INCR`), or a change cannot be read.
    /// Changed in place (copied only while a router holds it), so following
    /// a stream of changes costs what they change, not the index's size.
    /// The caller holds `rebuild`, so nothing else replaces the cached index meanwhile.
    async fn catch_up(&self, version: i64) -> anyhow::Result<Option<Arc<Index>>> {
        let index = match self.cache.lock().as_ref() {
            Some(cached) => Head {
                version: cached.index.version,
                cursor: cached.index.cursor.clone(),
            },
            None => return Ok(None),
        };
        let behind = (version - index.version) as usize;
        if behind > SUBSCRIPTION_CHANGES_KEPT as usize {
            return Ok(None);
        }
        // From the last change applied, included: it must still be there, with its version.
        let Some(mut changes) = self.store.changes_from(&index.cursor, behind + 1).await? else {
            return Ok(None);
        };
        if index.cursor != NO_CHANGE_YET {
            match changes.first() {
                Some(c) if c.entry == index.cursor && c.version == index.version => {
                    changes.remove(0);
                }
                _ => return Ok(None),
            }
        }
        let follows = changes
            .iter()
            .zip(index.version + 1..)
            .all(|(change, expected)| change.version == expected);
        if !follows || changes.len() < behind {
            return Ok(None);
        }
        let mut ids: Vec<String> = changes.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        ids.dedup();
        let found = self.store.fetch(&ids).await?;
        let mut cache = self.cache.lock();
        let Some(cached) = cache.as_mut() else {
            return Ok(None);
        };
        let updated = Arc::make_mut(&mut cached.index);
        for id in &ids {
            updated.remove(id);
        }
        for found in found {
            match found {
                Ok(sub) => updated.add(sub),
                Err(bad) => updated.add_unreadable(unreadable(bad)),
            }
        }
        let last = changes
            .last()
            .expect("behind > 0: at least one change was read");
        updated.version = last.version;
        updated.cursor = last.entry.clone();
        metrics::routing_index_refreshed("updated");
        tracing::debug!(
            changes = changes.len(),
            subscriptions = updated.len(),
            "routing index updated"
        );
        Ok(Some(cached.index.clone()))
    }

    /// An index of every subscription, read a chunk at a time.
    async fn rebuild(&self) -> anyhow::Result<Arc<Index>> {
        let started = Instant::now();
        // Changes made while the subscriptions are read are applied again after:
        // applying one is reading that subscription again, so twice is harmless.
        let (version, cursor) = self.store.snapshot().await?;
        // Added as they are read, a chunk at a time: all of them are never held twice.
        let mut index = Index::build(version, []);
        index.cursor = cursor;
        self.store
            .for_each(|found| match found {
                Ok(sub) => index.add(sub),
                Err(bad) => index.add_unreadable(unreadable(bad)),
            })
            .await?;
        metrics::routing_index_refreshed("rebuilt");
        tracing::info!(
            subscriptions = index.len(),
            patterns = index.topics.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "routing index rebuilt"
        );
        Ok(Arc::new(index))
    }
}

fn unreadable(bad: Unreadable) -> Unreadable {
    tracing::warn!(subscription = %bad.id, problem = %bad.problem, "unreadable subscription: left out of topic routing; its user's direct events dead-letter it");
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(
        id: &str,
        topics: &[&str],
        headers: Option<(MatchMode, &[(&str, &str)])>,
    ) -> Subscription {
        Subscription {
            id: id.into(),
            user: None,
            endpoint: format!("https://push.example.net/{id}"),
            p256dh: String::new(),
            auth: String::new(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            format: Default::default(),
            headers: headers.map(|(mode, values)| HeaderFilter {
                mode,
                values: values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            created_at: String::new(),
        }
    }

    fn ids(index: &Index, topic: &str, headers: &[(&str, &str)]) -> Vec<String> {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        index
            .route(topic, &headers)
            .into_iter()
            .map(|d| d.id().to_string())
            .collect()
    }

    #[test]
    fn topics_and_header_filters_combine() {
        let index = Index::build(
            1,
            vec![
                sub("lot7", &["parking.lot-7.*"], None),
                sub("everyone", &["#"], None),
                sub(
                    "lot7-entries",
                    &["parking.#"],
                    Some((MatchMode::All, &[("lot", "7"), ("kind", "entry")])),
                ),
                sub(
                    "any-lot-7-or-9",
                    &[],
                    Some((MatchMode::Any, &[("lot", "7"), ("lot2", "9")])),
                ),
                sub("direct-only", &[], None),
            ],
        );
        assert_eq!(
            index.len(),
            5,
            "direct-only subscriptions are indexed (for their user)"
        );
        assert_eq!(
            ids(
                &index,
                "parking.lot-7.entry",
                &[("lot", "7"), ("kind", "entry")]
            ),
            vec!["lot7", "everyone", "lot7-entries", "any-lot-7-or-9"]
        );
        assert_eq!(
            ids(
                &index,
                "parking.lot-7.exit",
                &[("lot", "7"), ("kind", "exit")]
            ),
            vec!["lot7", "everyone", "any-lot-7-or-9"]
        );
        assert_eq!(ids(&index, "billing.paid", &[]), vec!["everyone"]);
    }

    #[test]
    fn subscriptions_are_replaced_and_removed_in_place_and_removed_slots_compacted() {
        let mut index = Index::build(1, vec![sub("a", &["x.*"], None), sub("b", &["x.*"], None)]);
        index.add(sub("a", &["y.*"], None));
        assert_eq!(ids(&index, "x.1", &[]), vec!["b"]);
        assert_eq!(ids(&index, "y.1", &[]), vec!["a"]);
        index.add(sub("b", &[], None));
        assert!(
            ids(&index, "x.1", &[]).is_empty(),
            "direct-only now: out of topic routing"
        );
        index.remove("a");
        index.remove("never-there");
        assert_eq!(index.len(), 1, "b stays, for direct events");
        index.remove("b");
        assert!(index.is_empty());

        for round in 0..3 {
            for i in 0..2000 {
                index.add(sub(&format!("s{i}"), &["z.#"], None));
            }
            for i in 0..1990 {
                index.remove(&format!("s{i}"));
            }
            assert_eq!(index.len(), 10, "round {round}");
            assert_eq!(ids(&index, "z", &[]).len(), 10);
        }
        assert!(
            index.slots.len() < 4000,
            "removed slots were compacted away: {} slots for 10 subscriptions",
            index.slots.len()
        );
    }
}
