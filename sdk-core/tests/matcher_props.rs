//! Property tests for topic matching, pattern intersection, parsing and frame
//! decoding, each checked against a small, obviously-correct reference model
//! written here (slow is fine; the models only run on tiny inputs).

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;

use promhub_core::frames::DecodeErrorKind;
use promhub_core::{ClientFrame, HubFrame, Pattern, Policy, Topic};

// ---------------------------------------------------------------------------
// Reference models

/// Glob matching by plain recursion over segments: `**` tries every split.
fn reference_matches(pattern: &[&str], topic: &[&str]) -> bool {
    match pattern.split_first() {
        None => topic.is_empty(),
        Some((&"**", rest)) => (0..=topic.len()).any(|k| reference_matches(rest, &topic[k..])),
        Some((&"*", rest)) => !topic.is_empty() && reference_matches(rest, &topic[1..]),
        Some((literal, rest)) => {
            topic.first() == Some(literal) && reference_matches(rest, &topic[1..])
        }
    }
}

const WITNESS_ALPHABET: [&str; 4] = ["a", "b", "c", "d"];

/// Brute-force intersection: is there a topic over {a,b,c,d} that both
/// patterns match?
///
/// Why the length bound is enough: take a shortest witness. Each of its
/// segments is consumed in each pattern either by a non-`**` element or
/// inside a `**`. A segment that sits inside a `**` in *both* patterns can be
/// deleted and what is left is still matched by both, so in a shortest
/// witness every segment uses up a non-`**` element of `p` or of `q`: it has
/// at most len(p) + len(q) segments. (If deleting would leave no segment at
/// all, both patterns are all `**` and any one-segment topic is a witness.)
/// The letters are enough too: each segment of a witness either equals a
/// literal of `p` or `q` (all drawn from {a,b,c}) or meets only wildcards, and
/// then any letter does. We search one segment further than needed.
fn reference_intersects(p: &[&str], q: &[&str]) -> bool {
    let max_len = p.len() + q.len() + 1;
    (1..=max_len).any(|len| {
        // Odometer over WITNESS_ALPHABET^len.
        let mut digits = vec![0usize; len];
        loop {
            let topic: Vec<&str> = digits.iter().map(|&d| WITNESS_ALPHABET[d]).collect();
            if reference_matches(p, &topic) && reference_matches(q, &topic) {
                return true;
            }
            let mut i = 0;
            loop {
                if i == len {
                    return false;
                }
                digits[i] += 1;
                if digits[i] < WITNESS_ALPHABET.len() {
                    break;
                }
                digits[i] = 0;
                i += 1;
            }
        }
    })
}

/// semantics.md §1, restated directly from the text.
fn reference_valid(s: &str, wildcards_allowed: bool) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let segments: Vec<&str> = s.split('.').collect();
    segments.len() <= 32
        && segments.iter().all(|segment| {
            !segment.is_empty()
                && !segment.chars().any(|c| c.is_whitespace() || c.is_control())
                && (!segment.contains('*')
                    || (wildcards_allowed && (*segment == "*" || *segment == "**")))
        })
}

// ---------------------------------------------------------------------------
// Generators

fn topic_segments(max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    vec(select(vec!["a", "b", "c"]), 1..=max)
}

fn pattern_segments(max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    vec(select(vec!["a", "b", "c", "*", "**"]), 1..=max)
}

fn pattern_of(segments: &[&str]) -> Pattern {
    let text = segments.join(".");
    Pattern::parse(&text).unwrap_or_else(|e| panic!("generated pattern {text:?}: {e}"))
}

/// Strings built from pieces that sit on every validity boundary.
fn topic_like_string() -> impl Strategy<Value = String> {
    let piece = select(vec![
        "a",
        "b",
        "ü",
        "x_y-z:1",
        "",
        "*",
        "**",
        "***",
        "x*",
        "*x",
        " ",
        "\t",
        "\u{0}",
        "\u{7f}",
        "\u{a0}",
        "\u{2028}",
        "\u{200b}",
        "longsegment_longsegment_longsegment",
    ]);
    vec(piece, 1..40).prop_map(|pieces| pieces.join("."))
}

const FIELD_NAMES: &[&str] = &[
    "op",
    "topic",
    "payload",
    "opts",
    "rid",
    "group",
    "id",
    "token",
    "v",
    "client",
    "reason",
    "delay_ms",
    "final",
    "code",
    "msg",
    "session",
    "server",
    "heartbeat_ms",
    "seq",
    "from_seq",
    "event",
    "ctx",
    "expires_at",
    "duplicate",
    "retry_after_ms",
    "from",
    "max_inflight",
    "ack_timeout_ms",
    "max_deliver",
    "snapshot",
    "headers",
    "key",
    "tags",
    "caused_by",
    "sid",
    "ts",
    "attempt",
    "ack_deadline",
];

const OPS: &[&str] = &[
    "AUTH",
    "PUBLISH",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "ACK",
    "NACK",
    "WORKING",
    "PING",
    "PONG",
    "OK",
    "ERR",
    "PUBACK",
    "SUBACK",
    "UNSUBACK",
    "EVENT",
    "EXPIRING",
    "publish",
    "",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0u64..5).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(vec![
            "a",
            "a.b",
            "a.*",
            "a.**",
            "**",
            "",
            "a..b",
            "x y",
            "earliest",
            "latest",
            "middle",
            "g",
            "*",
            "forbidden",
            "bad_request",
            "nope",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(select(FIELD_NAMES.to_vec()), inner, 0..6).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

/// JSON objects shaped like frames: a (usually) known op plus random fields,
/// so that a good share of them decode and the decoders' deep paths run.
fn frame_like_json() -> impl Strategy<Value = String> {
    (
        select(OPS.to_vec()),
        btree_map(select(FIELD_NAMES.to_vec()), json_value(), 0..8),
    )
        .prop_map(|(op, fields)| {
            let mut object: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            object.insert("op".to_owned(), Value::from(op));
            Value::Object(object).to_string()
        })
}

/// Everything a decoder promises about one input: no panic; a decoded frame
/// re-encodes to text that decodes to a frame with the same encoding; an
/// error that could not read the object carries no rid.
fn check_decoders(text: &str) -> Result<(), TestCaseError> {
    match ClientFrame::decode(text) {
        Ok(frame) => {
            let encoded = frame.encode();
            let again = ClientFrame::decode(&encoded)
                .map_err(|e| TestCaseError::fail(format!("{encoded}: {e}")))?;
            prop_assert_eq!(again.encode(), encoded);
        }
        Err(e) => {
            if e.kind == DecodeErrorKind::Malformed {
                prop_assert_eq!(&e.rid, &None);
            }
            prop_assert!(!e.to_string().is_empty());
        }
    }
    match HubFrame::decode(text) {
        Ok(frame) => {
            let encoded = frame.encode();
            let again = HubFrame::decode(&encoded)
                .map_err(|e| TestCaseError::fail(format!("{encoded}: {e}")))?;
            prop_assert_eq!(&again, &frame);
            prop_assert_eq!(again.encode(), encoded);
        }
        Err(e) => {
            if e.kind == DecodeErrorKind::Malformed {
                prop_assert_eq!(&e.rid, &None);
            }
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

/// Parsing any string: no panic, and the outcome agrees with the spec model.
fn check_parsers(text: &str) -> Result<(), TestCaseError> {
    let topic = Topic::parse(text);
    let pattern = Pattern::parse(text);
    prop_assert_eq!(
        topic.is_ok(),
        reference_valid(text, false),
        "Topic {:?}",
        text
    );
    prop_assert_eq!(
        pattern.is_ok(),
        reference_valid(text, true),
        "Pattern {:?}",
        text
    );
    if let (Ok(topic), Ok(pattern)) = (&topic, &pattern) {
        prop_assert!(pattern.matches(topic));
        prop_assert!(pattern.intersects(&Pattern::from(topic.clone())));
    }
    // Scopes: never a panic; an accepted list gives one rule per scope.
    if let Ok(policy) = Policy::from_scope_str(text) {
        let scopes = text
            .split_ascii_whitespace()
            .filter(|s| *s != "admin")
            .count();
        prop_assert_eq!(policy.rules.len(), scopes);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties

/// Failing cases are saved next to this file (matcher_props.regressions) so
/// that they are replayed first on the next run.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn matches_agrees_with_the_reference(
        p in pattern_segments(8),
        t in topic_segments(8),
    ) {
        let pattern = pattern_of(&p);
        let topic = Topic::parse(&t.join(".")).unwrap();
        prop_assert_eq!(
            pattern.matches(&topic),
            reference_matches(&p, &t),
            "{} vs {}", pattern, topic
        );
    }

    /// Patterns made to match, so that `true` answers are well covered.
    #[test]
    fn matches_agrees_on_topics_built_from_the_pattern(
        p in pattern_segments(8),
        fill in vec(topic_segments(3), 8),
        counts in vec(0usize..=3, 8),
        extra in select(vec!["a", "b", "c"]),
        mutate in any::<bool>(),
    ) {
        let mut t: Vec<&str> = Vec::new();
        for (i, segment) in p.iter().enumerate() {
            match *segment {
                "**" => t.extend(fill[i].iter().take(counts[i])),
                "*" => t.push(fill[i][0]),
                literal => t.push(literal),
            }
        }
        if mutate || t.is_empty() {
            t.push(extra);
        }
        let pattern = pattern_of(&p);
        let topic = Topic::parse(&t.join(".")).unwrap();
        prop_assert_eq!(
            pattern.matches(&topic),
            reference_matches(&p, &t),
            "{} vs {}", pattern, topic
        );
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn intersects_agrees_with_brute_force(
        p in pattern_segments(3),
        q in pattern_segments(3),
    ) {
        let (a, b) = (pattern_of(&p), pattern_of(&q));
        let expected = reference_intersects(&p, &q);
        prop_assert_eq!(a.intersects(&b), expected, "{} ∩ {}", a, b);
        prop_assert_eq!(b.intersects(&a), expected, "{} ∩ {}", b, a);
    }

    /// Longer patterns: the brute force would take too long, but a topic that
    /// matches both patterns is a witness, so then `intersects` must be true.
    #[test]
    fn intersects_is_true_when_a_topic_matches_both(
        p in pattern_segments(8),
        q in pattern_segments(8),
        t in topic_segments(8),
    ) {
        let (a, b) = (pattern_of(&p), pattern_of(&q));
        if reference_matches(&p, &t) && reference_matches(&q, &t) {
            prop_assert!(a.intersects(&b), "{} ∩ {} (witness {:?})", a, b, t);
        }
        let as_pattern = pattern_of(&t);
        prop_assert_eq!(a.intersects(&as_pattern), reference_matches(&p, &t));
    }
}

/// Every pair of patterns of up to two segments over {a, b, *, **}: small
/// enough to enumerate completely, which the random tests cannot promise.
#[test]
fn intersects_agrees_with_brute_force_exhaustively() {
    let symbols = ["a", "b", "*", "**"];
    let mut patterns: Vec<Vec<&str>> = symbols.iter().map(|s| vec![*s]).collect();
    for x in symbols {
        for y in symbols {
            patterns.push(vec![x, y]);
        }
    }
    let mut checked = 0;
    for p in &patterns {
        for q in &patterns {
            let expected = reference_intersects(p, q);
            assert_eq!(
                pattern_of(p).intersects(&pattern_of(q)),
                expected,
                "{p:?} ∩ {q:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 20 * 20);
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn parse_then_as_str_round_trips(
        segments in vec("[a-zA-Z0-9_:ü-]{1,6}", 1..=32),
        wildcards in vec(0u8..4, 32),
    ) {
        let topic_text = segments.join(".");
        prop_assume!(topic_text.len() <= 255);
        let topic = Topic::parse(&topic_text).unwrap();
        prop_assert_eq!(topic.as_str(), topic_text.as_str());
        prop_assert_eq!(topic.to_string(), topic_text.clone());
        let json = serde_json::to_string(&topic).unwrap();
        prop_assert_eq!(serde_json::from_str::<Topic>(&json).unwrap(), topic.clone());

        let pattern_text = segments
            .iter()
            .zip(&wildcards)
            .map(|(s, w)| match w {
                0 => "*",
                1 => "**",
                _ => s.as_str(),
            })
            .collect::<Vec<_>>()
            .join(".");
        let pattern = Pattern::parse(&pattern_text).unwrap();
        prop_assert_eq!(pattern.as_str(), pattern_text.as_str());
        prop_assert_eq!(pattern.to_string(), pattern_text.clone());
        let json = serde_json::to_string(&pattern).unwrap();
        prop_assert_eq!(serde_json::from_str::<Pattern>(&json).unwrap(), pattern.clone());
        prop_assert_eq!(pattern.is_concrete(), !wildcards[..segments.len()].iter().any(|w| *w < 2));
        let from_topic = Pattern::from(topic.clone());
        prop_assert_eq!(from_topic.as_str(), topic_text.as_str());
        prop_assert!(Pattern::from(topic.clone()).matches(&topic));
    }

    #[test]
    fn parsers_agree_with_the_spec_on_boundary_strings(text in topic_like_string()) {
        check_parsers(&text)?;
    }

    #[test]
    fn parsers_never_panic_on_unicode(text in any::<String>()) {
        check_parsers(&text)?;
        check_decoders(&text)?;
    }

    #[test]
    fn parsers_never_panic_on_bytes(bytes in vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        check_parsers(&text)?;
        check_decoders(&text)?;
    }

    #[test]
    fn decoders_never_panic_on_frame_like_json(text in frame_like_json()) {
        check_decoders(&text)?;
    }
}

/// The frame generator must reach the decoders' success paths, or the
/// round-trip half of `check_decoders` would check nothing.
#[test]
fn frame_generator_produces_decodable_frames() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = frame_like_json();
    let (mut client_ok, mut hub_ok) = (0, 0);
    let samples = 4000;
    for _ in 0..samples {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        client_ok += usize::from(ClientFrame::decode(&text).is_ok());
        hub_ok += usize::from(HubFrame::decode(&text).is_ok());
    }
    eprintln!("decodable: client {client_ok}/{samples}, hub {hub_ok}/{samples}");
    assert!(
        client_ok >= samples / 100,
        "client frames decoded: {client_ok}"
    );
    assert!(hub_ok >= samples / 100, "hub frames decoded: {hub_ok}");
}
