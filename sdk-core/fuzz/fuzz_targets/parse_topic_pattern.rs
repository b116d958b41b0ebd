//! Two strings (split at the first newline): parse each as topic and
//! pattern, then check matching and intersection against each other and
//! against an independent dynamic-programming matcher.
#![no_main]

use libfuzzer_sys::fuzz_target;
use promhub_core::{Pattern, Topic};

/// Reference matcher: `reach[i][j]` = the first `i` pattern segments match
/// the first `j` topic segments. A different algorithm from the library's
/// backtracking one, so the two check each other.
fn reference_matches(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    let mut reach = vec![vec![false; t.len() + 1]; p.len() + 1];
    reach[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=t.len() {
            reach[i][j] = match p[i - 1] {
                "**" => reach[i - 1][j] || (j > 0 && reach[i][j - 1]),
                "*" => j > 0 && reach[i - 1][j - 1],
                literal => j > 0 && reach[i - 1][j - 1] && t[j - 1] == literal,
            };
        }
    }
    reach[p.len()][t.len()]
}

fn check(pattern: &Pattern, topic: &Topic) {
    let matches = pattern.matches(topic);
    assert_eq!(
        matches,
        reference_matches(pattern.as_str(), topic.as_str()),
        "{pattern} vs {topic}"
    );
    assert_eq!(
        matches,
        pattern.intersects(&Pattern::from(topic.clone())),
        "matches and intersects disagree: {pattern} vs {topic}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (first, second) = text.split_once('\n').unwrap_or((&text, ""));
    let parsed: Vec<(Result<Topic, _>, Result<Pattern, _>)> = [first, second]
        .iter()
        .map(|s| {
            let topic = Topic::parse(s);
            let pattern = Pattern::parse(s);
            if let Ok(topic) = &topic {
                // Every topic is a pattern naming exactly itself.
                let pattern = pattern.as_ref().expect("a topic is a valid pattern");
                assert_eq!(topic.as_str(), *s);
                assert_eq!(pattern.as_topic().as_ref(), Some(topic));
                assert!(pattern.matches(topic));
            }
            if let Ok(pattern) = &pattern {
                assert_eq!(pattern.as_str(), *s);
            }
            (topic, pattern)
        })
        .collect();
    for (_, pattern) in &parsed {
        for (topic, _) in &parsed {
            if let (Ok(pattern), Ok(topic)) = (pattern, topic) {
                check(pattern, topic);
            }
        }
    }
    if let (Ok(a), Ok(b)) = (&parsed[0].1, &parsed[1].1) {
        assert_eq!(
            a.intersects(b),
            b.intersects(a),
            "{a} ∩ {b} is not symmetric"
        );
        assert!(a.intersects(a));
    }
});
