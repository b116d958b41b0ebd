//! Topics and subscription patterns (semantics.md §1).
//!
//! [`Topic`] and [`Pattern`] can only be built through parsing, so any value of
//! these types is valid: code that receives one never validates it again.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most segments a topic or pattern may have.
pub const MAX_SEGMENTS: usize = 32;
/// Most bytes a topic or pattern may have, separators included.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a string is not a valid topic or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is {0} bytes long; at most {MAX_TOPIC_BYTES} are allowed")]
    TooLong(usize),
    #[error("topic has {0} segments; at most {MAX_SEGMENTS} are allowed")]
    TooManySegments(usize),
    #[error("segment {index} is empty (leading, trailing or doubled '.')")]
    EmptySegment { index: usize },
    #[error("segment {index} contains whitespace or a control character")]
    BadCharacter { index: usize },
    #[error("segment {index} is a wildcard; wildcards are only allowed in subscription patterns")]
    WildcardInTopic { index: usize },
    #[error("segment {index}: '*' must be a whole segment ('*' or '**')")]
    PartialWildcard { index: usize },
}

/// Checks one segment's characters; wildcards are handled by the callers.
fn check_segment(segment: &str, index: usize) -> Result<(), TopicError> {
    if segment.is_empty() {
        return Err(TopicError::EmptySegment { index });
    }
    if segment.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::BadCharacter { index });
    }
    Ok(())
}

fn check_shape(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(s.len()));
    }
    let segments = s.split('.').count();
    if segments > MAX_SEGMENTS {
        return Err(TopicError::TooManySegments(segments));
    }
    Ok(())
}

/// A concrete topic such as `process.state`: what events are published to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        check_shape(s)?;
        for (index, segment) in s.split('.').enumerate() {
            check_segment(segment, index)?;
            if segment.contains('*') {
                return Err(if segment == "*" || segment == "**" {
                    TopicError::WildcardInTopic { index }
                } else {
                    TopicError::PartialWildcard { index }
                });
            }
        }
        Ok(Topic(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse(s)
    }
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    /// Matches exactly this segment (byte-exact).
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Many,
}

/// A subscription pattern such as `process.**` or `a.*.z`.
#[derive(Clone)]
pub struct Pattern {
    source: Arc<str>,
    segments: Arc<[Segment]>,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for Pattern {}
impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.source.hash(state)
    }
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        check_shape(s)?;
        let mut segments = Vec::new();
        for (index, segment) in s.split('.').enumerate() {
            check_segment(segment, index)?;
            segments.push(match segment {
                "*" => Segment::One,
                "**" => Segment::Many,
                _ if segment.contains('*') => return Err(TopicError::PartialWildcard { index }),
                _ => Segment::Literal(segment.into()),
            });
        }
        Ok(Pattern {
            source: Arc::from(s),
            segments: segments.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has no wildcard, i.e. it names exactly one topic.
    pub fn is_concrete(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The topic this pattern names, if it has no wildcard.
    pub fn as_topic(&self) -> Option<Topic> {
        self.is_concrete().then(|| Topic(self.source.clone()))
    }

    /// Does `topic` match this pattern?
    ///
    /// Glob matching over segments (`**` like a glob `*`, `*` like `?`) with a
    /// single backtrack point: correct for any number of `**` anywhere, and
    /// O(pattern segments × topic segments) in the worst case, with no
    /// allocation.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_segments(topic.as_str())
    }

    fn matches_segments(&self, topic: &str) -> bool {
        let pattern = &self.segments[..];
        // Topic segments are walked through byte offsets so that backtracking
        // is O(1): `t` is the offset of the current segment, `None` = end.
        let next = |offset: usize| -> (&str, Option<usize>) {
            let rest = &topic[offset..];
            match rest.find('.') {
                Some(dot) => (&rest[..dot], Some(offset + dot + 1)),
                None => (rest, None),
            }
        };
        let mut p = 0usize;
        let mut t: Option<usize> = Some(0);
        // Where to resume if the current attempt fails: the pattern index just
        // after the last `**`, and the topic offset that `**` should swallow
        // one more segment from.
        let mut backtrack: Option<(usize, Option<usize>)> = None;
        loop {
            match t {
                Some(offset) => {
                    let (segment, after) = next(offset);
                    match pattern.get(p) {
                        Some(Segment::Many) => {
                            backtrack = Some((p + 1, Some(offset)));
                            p += 1;
                            continue;
                        }
                        Some(Segment::One) => {
                            p += 1;
                            t = after;
                            continue;
                        }
                        Some(Segment::Literal(lit)) if **lit == *segment => {
                            p += 1;
                            t = after;
                            continue;
                        }
                        _ => {}
                    }
                    // Mismatch (or pattern exhausted): let the last `**` eat
                    // one more segment, or fail.
                    match backtrack {
                        Some((bp, Some(boffset))) => {
                            let (_, bafter) = next(boffset);
                            backtrack = Some((bp, bafter));
                            p = bp;
                            t = bafter;
                        }
                        _ => return false,
                    }
                }
                None => {
                    // Topic consumed: the rest of the pattern must be `**` only.
                    return pattern[p..].iter().all(|s| matches!(s, Segment::Many));
                }
            }
        }
    }

    /// Could some topic match both patterns? (semantics.md §2, used by the
    /// subscribe check). Dynamic programming over pairs of positions,
    /// O(len(a) × len(b)). It does not account for the 32-segment / 255-byte
    /// limits of the witness topic, so in rare edge cases it says "yes" where
    /// no valid topic exists; that errs on the side the spec allows, because
    /// the delivery-time check stays authoritative.
    pub fn intersects(&self, other: &Pattern) -> bool {
        let a = &self.segments[..];
        let b = &other.segments[..];
        let (n, m) = (a.len(), b.len());
        // reach[i][j]: some topic prefix is matched by a[..i] and b[..j].
        let width = m + 1;
        let mut reach = vec![false; (n + 1) * (m + 1)];
        reach[0] = true;
        for i in 0..=n {
            for j in 0..=m {
                if !reach[i * width + j] {
                    continue;
                }
                let sa = a.get(i);
                let sb = b.get(j);
                // `**` may match nothing.
                if matches!(sa, Some(Segment::Many)) {
                    reach[(i + 1) * width + j] = true;
                }
                if matches!(sb, Some(Segment::Many)) {
                    reach[i * width + j + 1] = true;
                }
                // Both consume one common topic segment; a `**` stays put
                // because it may consume more.
                if let (Some(x), Some(y)) = (sa, sb) {
                    let compatible = match (x, y) {
                        (Segment::Literal(l), Segment::Literal(r)) => l == r,
                        _ => true,
                    };
                    if compatible {
                        let ni = if matches!(x, Segment::Many) { i } else { i + 1 };
                        let nj = if matches!(y, Segment::Many) { j } else { j + 1 };
                        reach[ni * width + nj] = true;
                    }
                }
            }
        }
        reach[n * width + m]
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.source)
    }
}

impl std::str::FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl From<Topic> for Pattern {
    fn from(topic: Topic) -> Self {
        let segments: Vec<Segment> = topic
            .segments()
            .map(|s| Segment::Literal(s.into()))
            .collect();
        Pattern {
            source: topic.0,
            segments: segments.into(),
        }
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                <$ty>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(Topic);
string_serde!(Pattern);

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    #[test]
    fn intersection_examples_from_the_spec() {
        assert!(p("a.*").intersects(&p("a.b.**")));
        assert!(!p("a.*").intersects(&p("b.**")));
        assert!(p("**.x").intersects(&p("x.**")));
        assert!(p("**").intersects(&p("a.b.c")));
        assert!(!p("a.*.c").intersects(&p("a.b")));
        assert!(p("a.**.c").intersects(&p("*.b.*")));
        assert!(!p("a.**.c").intersects(&p("*.b.d")));
    }

    #[test]
    fn topic_errors_say_what_is_wrong() {
        assert_eq!(Topic::parse(""), Err(TopicError::Empty));
        assert_eq!(
            Topic::parse("a..b"),
            Err(TopicError::EmptySegment { index: 1 })
        );
        assert_eq!(
            Topic::parse("a.*"),
            Err(TopicError::WildcardInTopic { index: 1 })
        );
        assert_eq!(
            Pattern::parse("a.b**"),
            Err(TopicError::PartialWildcard { index: 1 })
        );
    }

    #[test]
    fn serde_validates() {
        let topic: Topic = serde_json::from_str("\"a.b\"").unwrap();
        assert_eq!(topic, t("a.b"));
        assert!(serde_json::from_str::<Topic>("\"a.*\"").is_err());
        assert!(serde_json::from_str::<Pattern>("\"a.*\"").is_ok());
        assert_eq!(serde_json::to_string(&p("a.**")).unwrap(), "\"a.**\"");
    }

    #[test]
    fn concrete_pattern_is_a_topic() {
        assert_eq!(p("a.b").as_topic(), Some(t("a.b")));
        assert_eq!(p("a.*").as_topic(), None);
        assert!(Pattern::from(t("a.b")).matches(&t("a.b")));
    }
}
