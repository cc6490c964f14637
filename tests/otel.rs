//! With the `otel` feature, the worker's event span is exported over OTLP/HTTP
//! as a child of the producer's trace. Run by `scripts/test.sh` as
//! `cargo test --features otel --test otel`; without the feature this file is empty.
#![cfg(feature = "otel")]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;

#[test]
fn the_event_span_is_exported_as_a_child_of_the_producers_trace() {
    // A stand-in collector: records what arrives at POST /v1/traces.
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind the collector");
    let addr = listener.local_addr().expect("an address");
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                store.lock().expect("lock").push(body);
                ""
            }
        }),
    );
    runtime.spawn(async move { axum::serve(listener, app).await });

    // SAFETY: set before anything else reads the environment, in this test's own process.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    }
    herald::shared::telemetry::init(herald::shared::telemetry::LogFormat::Json);
    let trace = herald::shared::telemetry::TraceParent::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .expect("a valid traceparent");
    {
        let span = tracing::info_span!("event", event_id = "evt-1");
        herald::shared::telemetry::continue_trace(&span, &trace);
        let _entered = span.enter();
        tracing::info!("event done");
    }
    herald::shared::telemetry::shutdown();

    let bodies = received.lock().expect("lock").clone();
    assert!(!bodies.is_empty(), "nothing was exported to the collector");
    let trace_id = hex::decode("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
    let parent_id = hex::decode("00f067aa0ba902b7").expect("hex");
    let contains = |body: &Bytes, needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        bodies
            .iter()
            .any(|b| contains(b, &trace_id) && contains(b, &parent_id) && contains(b, b"event")),
        "the exported span does not carry the producer's trace id and parent span id"
    );
}
