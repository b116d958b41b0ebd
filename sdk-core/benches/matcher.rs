//! Hot paths of the hub: matching an event's topic against subscription
//! patterns, the subscribe-time intersection check, and decoding frames.
//!
//! Run: `cargo bench -p promhub-core --bench matcher`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use promhub_core::{ClientFrame, HubFrame, Pattern, Topic};

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s).expect("benchmark pattern is valid")
}

fn topic(s: &str) -> Topic {
    Topic::parse(s).expect("benchmark topic is valid")
}

/// `**` twenty times then `x`: the last case of vectors/topics.json, the
/// worst shape for a backtracking matcher.
fn deep_many_pattern() -> Pattern {
    pattern(&format!("{}x", "**.".repeat(20)))
}

fn bench_matches(c: &mut Criterion) {
    let deep = deep_many_pattern();
    let deep_hit = topic(&format!("{}x", "y.".repeat(31)));
    let deep_miss = topic(&vec!["y"; 32].join("."));
    assert!(deep.matches(&deep_hit) && !deep.matches(&deep_miss));

    let mut group = c.benchmark_group("matches");
    group.bench_function("deep_many_21seg_vs_32seg_hit", |b| {
        b.iter(|| black_box(&deep).matches(black_box(&deep_hit)))
    });
    group.bench_function("deep_many_21seg_vs_32seg_miss", |b| {
        b.iter(|| black_box(&deep).matches(black_box(&deep_miss)))
    });

    let typical = [
        ("process.**", "process.state", true),
        ("process.**", "processes.state", false),
        ("heartbeat.*", "heartbeat.received", true),
        ("a.**.z", "a.b.c.d.z", true),
        ("process.state", "process.state", true),
        ("**", "a.b.c", true),
    ];
    for (p, t, expected) in typical {
        let (p, t) = (pattern(p), topic(t));
        assert_eq!(p.matches(&t), expected, "{p} vs {t}");
        group.bench_function(format!("{p} vs {t}"), |b| {
            b.iter(|| black_box(&p).matches(black_box(&t)))
        });
    }
    group.finish();
}

fn bench_intersects(c: &mut Criterion) {
    // Sixteen `**` interleaved with literals: the DP visits every pair.
    let a = pattern(
        &(0..16)
            .map(|i| format!("**.s{}", i % 4))
            .collect::<Vec<_>>()
            .join("."),
    );
    let b = pattern(
        &(0..16)
            .map(|i| format!("s{}.**", (i + 1) % 4))
            .collect::<Vec<_>>()
            .join("."),
    );
    let disjoint = pattern(&format!("{}.never", "**.".repeat(20).trim_end_matches('.')));
    assert!(a.intersects(&b));
    assert!(!a.intersects(&disjoint));

    let mut group = c.benchmark_group("intersects");
    group.bench_function("long_many_32seg_x_32seg_yes", |bench| {
        bench.iter(|| black_box(&a).intersects(black_box(&b)))
    });
    group.bench_function("long_many_32seg_x_21seg_no", |bench| {
        bench.iter(|| black_box(&a).intersects(black_box(&disjoint)))
    });
    let (p, q) = (pattern("process.**"), pattern("process.state"));
    group.bench_function("process.** x process.state", |bench| {
        bench.iter(|| black_box(&p).intersects(black_box(&q)))
    });
    group.finish();
}

const PUBLISH: &str = r#"{"op":"PUBLISH","topic":"process.state","payload":{"pid":42,"status":"alive"},"opts":{"key":"host:sh:42"},"rid":"2"}"#;
const EVENT: &str = r#"{"op":"EVENT","topic":"process.**","group":"ops","event":{"id":"0193...","seq":1,"topic":"process.state","ts":1764300000000,"key":"host:sh:42","payload":{"pid":42,"status":"alive"}},"ctx":{"attempt":1}}"#;

fn bench_frames(c: &mut Criterion) {
    assert!(ClientFrame::decode(PUBLISH).is_ok());
    assert!(HubFrame::decode(EVENT).is_ok());
    let mut group = c.benchmark_group("frames");
    group.bench_function("decode_publish", |b| {
        b.iter(|| ClientFrame::decode(black_box(PUBLISH)))
    });
    group.bench_function("decode_event", |b| {
        b.iter(|| HubFrame::decode(black_box(EVENT)))
    });
    let event = HubFrame::decode(EVENT).expect("valid EVENT");
    group.bench_function("encode_event", |b| b.iter(|| black_box(&event).encode()));
    group.finish();
}

criterion_group!(benches, bench_matches, bench_intersects, bench_frames);
criterion_main!(benches);
