//! Routed events per second at 100,000 subscriptions and 10,000 distinct
//! patterns: `cargo bench --bench routing`. Figures go to BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use herald::deliver::route::Index;
use herald::shared::subscriptions::{HeaderFilter, MatchMode, Subscription};

fn main() {
    let subscriptions: Vec<Subscription> = (0..100_000u32)
        .map(|i| {
            let lot = i % 5_000;
            // 10,000 distinct patterns: an exact one and a wildcard one per lot.
            let topics = if i % 2 == 0 {
                vec![format!("parking.lot-{lot}.entry")]
            } else {
                vec![format!("parking.lot-{lot}.*")]
            };
            Subscription {
                id: format!("{i:032x}"),
                user: None,
                endpoint: format!("https://push.example.net/{i}"),
                p256dh: String::new(),
                auth: String::new(),
                topics,
                headers: (i % 10 == 0).then(|| HeaderFilter {
                    mode: MatchMode::All,
                    values: BTreeMap::from([("kind".to_string(), "entry".to_string())]),
                }),
                format: Default::default(),
                created_at: String::new(),
            }
        })
        .collect();
    let started = Instant::now();
    let index = Index::build(1, subscriptions);
    println!(
        "built an index of {} subscriptions in {:.0} ms",
        index.len(),
        started.elapsed().as_secs_f64() * 1e3
    );

    let headers = BTreeMap::from([("kind".to_string(), "entry".to_string())]);
    let events = 200_000u32;
    let mut matched = 0usize;
    let started = Instant::now();
    for n in 0..events {
        let topic = format!("parking.lot-{}.entry", n % 5_000);
        matched += black_box(index.route(&topic, &headers)).len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "routed {events} events in {secs:.2} s: {:.0} events/s, {:.1} µs per event, {:.1} subscriptions matched per event",
        events as f64 / secs,
        secs * 1e6 / events as f64,
        matched as f64 / events as f64
    );
}
