//! Matching stored topic strings against a pattern during a scan, shared by
//! the store backends. The matching itself is `promhub_core`'s.

use std::collections::HashMap;

use promhub_core::{Pattern, Topic};

/// Remembers per topic string whether a pattern matches it, so a scan over
/// many events of few topics parses and matches each topic once.
pub(crate) struct TopicFilter<'p> {
    pattern: &'p Pattern,
    seen: HashMap<String, bool>,
}

impl<'p> TopicFilter<'p> {
    pub(crate) fn new(pattern: &'p Pattern) -> Self {
        TopicFilter {
            pattern,
            seen: HashMap::new(),
        }
    }

    pub(crate) fn matches(&mut self, topic: &str) -> bool {
        if let Some(&m) = self.seen.get(topic) {
            return m;
        }
        // A stored topic that no longer parses cannot match; decoding the
        // event would report it as corrupt anyway.
        let m = Topic::parse(topic).is_ok_and(|t| self.pattern.matches(&t));
        // Bound the memory of one scan over a log with very many topics.
        if self.seen.len() < 4096 {
            self.seen.insert(topic.to_owned(), m);
        }
        m
    }
}

/// The literal segments a pattern starts with (`a.b` for `a.b.*.c`), or
/// `None` when it starts with a wildcard. Every matching topic is either
/// exactly this prefix or starts with it followed by a dot.
pub(crate) fn literal_prefix(pattern: &Pattern) -> Option<String> {
    let literal: Vec<&str> = pattern
        .as_str()
        .split('.')
        .take_while(|s| *s != "*" && *s != "**")
        .collect();
    if literal.is_empty() {
        None
    } else {
        Some(literal.join("."))
    }
}
