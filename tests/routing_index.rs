//! The routing index against what Redis may do to the subscription changes it
//! follows: entries written by hand, a failover that lost the last change, a
//! flush that brings the version back to the same number, and many changes
//! crossing the index's compaction.

mod helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use helpers::TestApp;
use herald::deliver::route::{Index, Router, REFRESH_EVERY};
use herald::shared::subscriptions::{Store, Subscription};

fn sub(id: &str, topics: &[&str]) -> Subscription {
    owned_sub(id, topics, None)
}

fn owned_sub(id: &str, topics: &[&str], user: Option<&str>) -> Subscription {
    Subscription {
        id: id.into(),
        user: user.map(str::to_string),
        endpoint: format!("https://push.example.net/{id}"),
        p256dh: String::new(),
        auth: String::new(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        headers: None,
        format: Default::default(),
        created_at: String::new(),
    }
}

fn ids(index: &Index, topic: &str) -> BTreeSet<String> {
    index
        .route(topic, &BTreeMap::new())
        .iter()
        .map(|d| d.id().to_string())
        .collect()
}

/// Who the router sends `topic` to, once its cached index is due for a check.
async fn routed(router: &Router, topic: &str) -> BTreeSet<String> {
    tokio::time::sleep(REFRESH_EVERY + Duration::from_millis(30)).await;
    ids(&router.index().await.expect("an index"), topic)
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_change_written_by_hand_makes_the_index_read_everything_not_stop() {
    let app = TestApp::start().await;
    let store = Store::new(app.db.clone());
    let router = Router::new(store.clone());
    store.put(&sub("a", &["news.*"])).await.expect("put");
    assert_eq!(routed(&router, "news.x").await, set(&["a"]));
    let _: String = redis::cmd("XADD")
        .arg(app.db.keys.subscription_changes())
        .arg("*")
        .arg("note")
        .arg("operator was here")
        .query(&mut app.redis.conn())
        .expect("XADD");
    store.put(&sub("b", &["news.*"])).await.expect("put");
    assert_eq!(routed(&router, "news.x").await, set(&["a", "b"]));
}

#[tokio::test]
async fn a_last_change_lost_in_a_failover_is_not_built_upon() {
    let app = TestApp::start().await;
    let store = Store::new(app.db.clone());
    let router = Router::new(store.clone());
    let keys = &app.db.keys;
    store.put(&sub("a", &["news.*"])).await.expect("put");
    store.put(&sub("lost", &["news.*"])).await.expect("put");
    assert_eq!(routed(&router, "news.x").await, set(&["a", "lost"]));
    // The promoted replica never had the second change.
    let last: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
        .arg(keys.subscription_changes())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut app.redis.conn())
        .expect("XREVRANGE");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(keys.subscription("lost"))
        .ignore()
        .cmd("SREM")
        .arg(keys.all_subscriptions())
        .arg("lost")
        .ignore()
        .cmd("XDEL")
        .arg(keys.subscription_changes())
        .arg(&last[0].0)
        .ignore()
        .cmd("SET")
        .arg(keys.subscriptions_version())
        .arg(1)
        .ignore()
        .query(&mut app.redis.conn())
        .expect("rolled back");
    // The next change gets the lost one's version number.
    store.put(&sub("new", &["news.*"])).await.expect("put");
    assert_eq!(routed(&router, "news.x").await, set(&["a", "new"]));
}

#[tokio::test]
async fn a_flush_that_brings_the_version_back_to_the_same_number_is_noticed() {
    let app = TestApp::start().await;
    let store = Store::new(app.db.clone());
    let router = Router::new(store.clone());
    store.put(&sub("old", &["news.*"])).await.expect("put");
    assert_eq!(routed(&router, "news.x").await, set(&["old"]));
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut app.redis.conn())
        .expect("FLUSHALL");
    store.put(&sub("fresh", &["news.*"])).await.expect("put");
    assert_eq!(routed(&router, "news.x").await, set(&["fresh"]));
}

#[test]
fn adds_replacements_and_removals_across_compactions_match_an_index_built_afresh() {
    let mut index = Index::build(0, []);
    // Every subscription, direct-only ones included: id -> (topics, user).
    let mut model: BTreeMap<String, (Vec<&str>, String)> = BTreeMap::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let patterns = ["a.*", "a.#", "#", "b.c", "*.c", "a.b"];
    for step in 0..60_000 {
        let id = format!("s{}", rnd(3000));
        if rnd(10) < 5 {
            let topics: Vec<&str> = (0..rnd(3)).map(|_| patterns[rnd(6) as usize]).collect();
            let user = format!("u{}", rnd(40));
            index.add(owned_sub(&id, &topics, Some(&user)));
            model.insert(id, (topics, user));
        } else {
            index.remove(&id);
            model.remove(&id);
        }
        if step % 997 == 0 {
            assert_eq!(index.len(), model.len(), "step {step}");
            let afresh = Index::build(
                0,
                model
                    .iter()
                    .map(|(id, (topics, user))| owned_sub(id, topics, Some(user))),
            );
            for topic in ["a.b", "a", "b.c", "x.c", "a.b.c"] {
                assert_eq!(
                    ids(&index, topic),
                    ids(&afresh, topic),
                    "step {step}, {topic}"
                );
            }
            for u in 0..40 {
                let user = format!("u{u}");
                let of = |index: &Index| -> BTreeSet<String> {
                    index
                        .for_user(&user)
                        .devices
                        .iter()
                        .map(|d| d.id().to_string())
                        .collect()
                };
                let expected: BTreeSet<String> = model
                    .iter()
                    .filter(|(_, (_, owner))| *owner == user)
                    .map(|(id, _)| id.clone())
                    .collect();
                assert_eq!(of(&index), expected, "step {step}, {user}");
                assert_eq!(of(&afresh), expected, "step {step}, {user}");
            }
        }
    }
}
