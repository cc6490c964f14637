//! Building Web Push messages alone (encryption; the VAPID token is cached per
//! origin, so it costs nothing per message): `cargo bench --bench crypto`.
//! Compares herald's encryption (ring) with web-push's own (ece over OpenSSL 3)
//! and with RustCrypto's P-256, and prints the crypto ceiling: messages per
//! second on every core, the most any pipeline could push here. Figures go to
//! BENCHMARKS.md; scripts/bench.sh prints the ceiling beside end-to-end figures.

use std::hint::black_box;
use std::time::{Duration, Instant};

use herald::deliver::push::encrypt::encrypt;
use herald::operate::sink::crypto::UserAgentKeys;

/// A parking notification as herald sends it (about 200 bytes of JSON).
const PAYLOAD: &[u8] = br#"{"title":"Vehicle entered","body":"AB-123-CD entered Lot 7 (Gare Nord) at 08:14","data":{"event_id":"01JD8Z6YB2M4XQ7Q9T3V5W8K1N","topic":"parking.lot-7.entry","lot":"7","plate":"AB-123-CD"},"tag":"entry-AB-123-CD"}"#;

/// Microseconds per call of `f`, over about `for_how_long`.
fn per_call(for_how_long: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < for_how_long {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let keys = UserAgentKeys::generate();
    let ua_public = keys.public_bytes();
    let auth = keys.auth;
    let window = Duration::from_secs(2);

    let ring_us = per_call(window, || {
        black_box(encrypt(&ua_public, &auth, PAYLOAD).expect("encrypts"));
    });
    let info = web_push::SubscriptionInfo::new(
        "https://push.example.net/x",
        &keys.p256dh_b64(),
        &keys.auth_b64(),
    );
    let web_push_us = per_call(window, || {
        let mut builder = web_push::WebPushMessageBuilder::new(&info);
        builder.set_ttl(3600);
        builder.set_payload(web_push::ContentEncoding::Aes128Gcm, PAYLOAD);
        black_box(builder.build().expect("builds"));
    });
    let peer = p256::PublicKey::from_sec1_bytes(&ua_public).expect("a point");
    let rustcrypto_ecdh_us = per_call(window, || {
        let ephemeral = p256::ecdh::EphemeralSecret::random(&mut rand::rngs::OsRng);
        black_box(ephemeral.public_key());
        black_box(ephemeral.diffie_hellman(&peer));
    });
    println!("one message of {} bytes, one core:", PAYLOAD.len());
    println!("  herald (ring: P-256, HKDF, AES-128-GCM)     {ring_us:7.1} us");
    println!("  web-push 0.11 (ece over OpenSSL 3)          {web_push_us:7.1} us");
    println!("  RustCrypto p256: key pair and ECDH alone    {rustcrypto_ecdh_us:7.1} us");

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let built: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0u64;
                    while started.elapsed() < window {
                        black_box(encrypt(&ua_public, &auth, PAYLOAD).expect("encrypts"));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("joins")).sum()
    });
    let ceiling = built as f64 / started.elapsed().as_secs_f64();
    println!("crypto ceiling: {ceiling:.0} messages/s on {cores} cores (herald's encryption)");
}
