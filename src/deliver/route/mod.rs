//! Who gets an event.
//!
//! - **Direct**: an event with `user` goes to every subscription of that user
//!   (each of their devices), and to nobody else.
//! - **Topic**: otherwise, to every subscription with a topic pattern that
//!   matches the event's `topic` (`*` one word, `#` zero or more; `#` alone is
//!   fan-out to everyone) and whose header filter, if any, matches its headers.
//!   A subscription with a header filter and no topics matches any topic.
//!
//! Topic routing uses an in-memory index of every subscription, rebuilt when
//! the subscriptions' version counter moves (checked at most every
//! [`REFRESH_EVERY`]), never a scan of Redis per event.

pub mod trie;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crate::shared::event::Event;
use crate::shared::subscriptions::{HeaderFilter, MatchMode, Store, Subscription, Unreadable};
use trie::PatternTrie;

/// How often a worker asks Redis whether subscriptions changed.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// The devices an event is meant for.
#[derive(Debug, Default)]
pub struct Targets {
    /// Shared with the index: a fan-out to 100,000 devices does not copy them.
    pub subscriptions: Vec<Arc<Subscription>>,
    /// Stored subscriptions that cannot be read back, with what is wrong with each.
    pub unreadable: Vec<Unreadable>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.unreadable.is_empty()
    }

    /// Every device, readable or not, one after the other.
    pub fn into_devices(self) -> Vec<Target> {
        let mut devices: Vec<Target> = self.subscriptions.into_iter().map(Target::Device).collect();
        devices.extend(self.unreadable.into_iter().map(Target::Unreadable));
        devices
    }
}

/// One device an event is meant for.
#[derive(Debug, Clone)]
pub enum Target {
    Device(Arc<Subscription>),
    /// A stored subscription that cannot be read back (dead-lettered, never pushed).
    Unreadable(Unreadable),
}

impl Target {
    /// The subscription id.
    pub fn id(&self) -> &str {
        match self {
            Target::Device(sub) => &sub.id,
            Target::Unreadable(bad) => &bad.id,
        }
    }
}

/// Every subscription with interests, indexed for matching.
#[derive(Debug, Default)]
pub struct Index {
    version: i64,
    subscriptions: Vec<Arc<Subscription>>,
    topics: PatternTrie,
    /// Subscriptions with a header filter and no topics: they match any topic.
    headers_only: Vec<u32>,
}

impl Index {
    pub fn build(version: i64, all: impl IntoIterator<Item = Subscription>) -> Index {
        let mut index = Index {
            version,
            ..Index::default()
        };
        for sub in all {
            index.add(sub);
        }
        index
    }

    /// Adds one subscription; one with neither topics nor a header filter only
    /// takes direct events and is left out.
    pub fn add(&mut self, sub: Subscription) {
        if sub.topics.is_empty() && sub.headers.is_none() {
            return;
        }
        let i = self.subscriptions.len() as u32;
        for pattern in &sub.topics {
            self.topics.insert(pattern, i);
        }
        if sub.topics.is_empty() {
            self.headers_only.push(i);
        }
        self.subscriptions.push(Arc::new(sub));
    }

    /// The subscriptions a topic event goes to.
    pub fn route(&self, topic: &str, headers: &BTreeMap<String, String>) -> Vec<Arc<Subscription>> {
        let mut found = HashSet::new();
        self.topics.matches(topic, &mut found);
        found.extend(&self.headers_only);
        let mut ids: Vec<u32> = found.into_iter().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|i| &self.subscriptions[i as usize])
            .filter(|s| s.headers.as_ref().is_none_or(|f| headers_match(f, headers)))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }
}

/// `all`: every value must equal the event's header; `any`: at least one must.
pub fn headers_match(filter: &HeaderFilter, headers: &BTreeMap<String, String>) -> bool {
    let mut checks = filter.values.iter().map(|(k, v)| headers.get(k) == Some(v));
    match filter.mode {
        MatchMode::All => checks.all(|ok| ok),
        MatchMode::Any => checks.any(|ok| ok),
    }
}

struct Cached {
    index: Arc<Index>,
    checked: Instant,
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

    /// The targets of `event`.
    pub async fn targets(&self, event: &Event) -> anyhow::Result<Targets> {
        let mut targets = Targets::default();
        match &event.user {
            Some(user) => {
                for found in self.store.for_user(user).await? {
                    match found {
                        Ok(sub) => targets.subscriptions.push(Arc::new(sub)),
                        Err(e) => targets.unreadable.push(e),
                    }
                }
            }
            None => targets.subscriptions = self.index().await?.route(&event.topic, &event.headers),
        }
        Ok(targets)
    }

    /// The cached index, if it was checked against the version less than `REFRESH_EVERY` ago.
    fn fresh(&self) -> Option<Arc<Index>> {
        self.cache
            .lock()
            .as_ref()
            .filter(|c| c.checked.elapsed() < REFRESH_EVERY)
            .map(|c| c.index.clone())
    }

    /// The current index: the cached one while the version has not moved.
    pub async fn index(&self) -> anyhow::Result<Arc<Index>> {
        if let Some(index) = self.fresh() {
            return Ok(index);
        }
        let _one_at_a_time = self.rebuild.lock().await;
        // Another task may have refreshed it while this one waited.
        if let Some(index) = self.fresh() {
            return Ok(index);
        }
        let version = self.store.version().await?;
        let cached = self.cache.lock().as_ref().map(|c| c.index.clone());
        let index = match cached {
            Some(index) if index.version == version => index,
            _ => {
                let started = Instant::now();
                // Added as they are read, a chunk at a time: all of them are never held twice.
                let mut index = Index::build(version, []);
                self.store
                    .for_each(|found| match found {
                        Ok(sub) => index.add(sub),
                        Err(bad) => tracing::warn!(subscription = %bad.id, problem = %bad.problem, "unreadable subscription left out of topic routing"),
                    })
                    .await?;
                let index = Arc::new(index);
                tracing::info!(
                    subscriptions = index.len(),
                    patterns = index.topics.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "routing index rebuilt"
                );
                index
            }
        };
        *self.cache.lock() = Some(Cached {
            index: index.clone(),
            checked: Instant::now(),
        });
        Ok(index)
    }
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
            .map(|s| s.id.clone())
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
        assert_eq!(index.len(), 4, "direct-only subscriptions are not indexed");
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
}
