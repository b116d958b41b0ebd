//! Every case of the shared spec vectors (`shared/spec/vectors/*.json`) must
//! pass. The files are read from the spec folder, never copied, so a change
//! to the contract is picked up by the next test run.
//!
//! Each test counts the cases it checked and compares that with the number of
//! cases in the file, and refuses sections it does not know: a new kind of
//! case added to the spec fails here until it is handled, instead of being
//! skipped silently.

use std::collections::BTreeSet;
use std::path::PathBuf;

use promhub_core::{Action, Pattern, Policy, Topic};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/spec/vectors"
    ))
}

/// Reads one vector file; a missing spec folder is a failure, not a skip.
fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read spec vector file {}: {e}\n\
             The repository must be cloned next to `shared/` (shared/spec/vectors/{name}).",
            path.display()
        )
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn object_keys(value: &Value, what: &str) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not a JSON object"))
        .keys()
        .cloned()
        .collect()
}

fn assert_known_keys(value: &Value, what: &str, known: &[&str]) {
    let unknown: Vec<String> = object_keys(value, what)
        .into_iter()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} has keys this test does not check: {unknown:?}; add them to the test"
    );
}

fn array<'a>(value: &'a Value, key: &str, file: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{file}: `{key}` is missing or not an array"))
}

fn string<'a>(value: &'a Value, key: &str, case: &str) -> &'a str {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{case}: `{key}` is missing or not a string"))
}

fn boolean(value: &Value, key: &str, case: &str) -> bool {
    value
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{case}: `{key}` is missing or not a bool"))
}

/// Collects failures so one run reports every failing case, then fails.
#[derive(Default)]
struct Report {
    checked: usize,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, describe: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            self.failures.push(describe());
        }
    }

    fn finish(self, file: &str, expected_cases: usize) {
        assert!(
            self.failures.is_empty(),
            "{file}: {} of {} cases failed:\n  {}",
            self.failures.len(),
            self.checked,
            self.failures.join("\n  ")
        );
        assert_eq!(
            self.checked, expected_cases,
            "{file}: checked {} cases but the file has {expected_cases}",
            self.checked
        );
    }
}

#[test]
fn topics_json() {
    let file = "topics.json";
    let v = load(file);
    assert_known_keys(
        &v,
        file,
        &[
            "about",
            "topics_valid",
            "topics_invalid",
            "patterns_valid",
            "patterns_invalid",
            "match",
        ],
    );
    let sections = [
        "topics_valid",
        "topics_invalid",
        "patterns_valid",
        "patterns_invalid",
        "match",
    ];
    let expected: usize = sections.iter().map(|s| array(&v, s, file).len()).sum();
    let mut report = Report::default();

    for (i, case) in array(&v, "topics_valid", file).iter().enumerate() {
        let s = case
            .as_str()
            .unwrap_or_else(|| panic!("topics_valid[{i}] is not a string"));
        let topic = Topic::parse(s);
        report.check(topic.as_ref().is_ok_and(|t| t.as_str() == s), || {
            format!("topics_valid[{i}] {s:?}: Topic::parse gave {topic:?}")
        });
        // Every topic is also a pattern that matches exactly itself.
        let as_pattern = Pattern::parse(s);
        if let (Ok(topic), Ok(pattern)) = (&topic, &as_pattern) {
            assert!(
                pattern.matches(topic) && pattern.is_concrete(),
                "topics_valid[{i}] {s:?}: as a pattern it does not match itself"
            );
        } else {
            assert!(
                as_pattern.is_ok(),
                "topics_valid[{i}] {s:?}: Pattern::parse gave {as_pattern:?}"
            );
        }
    }
    for (i, case) in array(&v, "topics_invalid", file).iter().enumerate() {
        let s = case
            .as_str()
            .unwrap_or_else(|| panic!("topics_invalid[{i}] is not a string"));
        let topic = Topic::parse(s);
        report.check(topic.is_err(), || {
            format!("topics_invalid[{i}] {s:?}: Topic::parse accepted it: {topic:?}")
        });
    }
    for (i, case) in array(&v, "patterns_valid", file).iter().enumerate() {
        let s = case
            .as_str()
            .unwrap_or_else(|| panic!("patterns_valid[{i}] is not a string"));
        let pattern = Pattern::parse(s);
        report.check(pattern.as_ref().is_ok_and(|p| p.as_str() == s), || {
            format!("patterns_valid[{i}] {s:?}: Pattern::parse gave {pattern:?}")
        });
    }
    for (i, case) in array(&v, "patterns_invalid", file).iter().enumerate() {
        let s = case
            .as_str()
            .unwrap_or_else(|| panic!("patterns_invalid[{i}] is not a string"));
        let pattern = Pattern::parse(s);
        report.check(pattern.is_err(), || {
            format!("patterns_invalid[{i}] {s:?}: Pattern::parse accepted it: {pattern:?}")
        });
    }
    for (i, case) in array(&v, "match", file).iter().enumerate() {
        let name = format!("match[{i}]");
        assert_known_keys(case, &name, &["pattern", "topic", "matches"]);
        let pattern_text = string(case, "pattern", &name);
        let topic_text = string(case, "topic", &name);
        let expected = boolean(case, "matches", &name);
        let name = format!("match[{i}] {pattern_text:?} vs {topic_text:?}");
        let pattern = Pattern::parse(pattern_text)
            .unwrap_or_else(|e| panic!("{name}: pattern does not parse: {e}"));
        let topic = Topic::parse(topic_text)
            .unwrap_or_else(|e| panic!("{name}: topic does not parse: {e}"));
        let got = pattern.matches(&topic);
        // A pattern matches a topic exactly when it intersects the pattern
        // that names only that topic: the ACL subscribe check relies on it.
        let intersects = pattern.intersects(&Pattern::from(topic.clone()));
        report.check(got == expected && intersects == expected, || {
            format!("{name}: expected {expected}, matches gave {got}, intersects gave {intersects}")
        });
    }
    report.finish(file, expected);
}

fn parse_action(s: &str, case: &str) -> Action {
    match s {
        "publish" => Action::Publish,
        "subscribe" => Action::Subscribe,
        other => panic!("{case}: unknown action {other:?}"),
    }
}

#[test]
fn acl_json() {
    let file = "acl.json";
    let v = load(file);
    assert_known_keys(&v, file, &["about", "policies", "cases"]);
    let policies: std::collections::BTreeMap<String, Policy> = v
        .get("policies")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{file}: `policies` is missing or not an object"))
        .iter()
        .map(|(name, json)| {
            let policy = Policy::from_json(json)
                .unwrap_or_else(|e| panic!("{file}: policy {name:?} is refused: {e}"));
            (name.clone(), policy)
        })
        .collect();

    let cases = array(&v, "cases", file);
    let mut report = Report::default();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("cases[{i}]");
        assert_known_keys(
            case,
            &name,
            &["policy", "action", "topic", "group", "allowed"],
        );
        let policy_name = string(case, "policy", &name);
        let action_text = string(case, "action", &name);
        let topic_text = string(case, "topic", &name);
        let group = match case.get("group") {
            Some(Value::Null) => None,
            Some(Value::String(g)) => Some(g.as_str()),
            other => panic!("{name}: `group` must be null or a string, got {other:?}"),
        };
        let expected = boolean(case, "allowed", &name);
        let name = format!(
            "cases[{i}] policy {policy_name:?} {action_text} {topic_text:?} group {group:?}"
        );
        let policy = policies
            .get(policy_name)
            .unwrap_or_else(|| panic!("{name}: no policy named {policy_name:?}"));
        let action = parse_action(action_text, &name);
        let topic = Topic::parse(topic_text)
            .unwrap_or_else(|e| panic!("{name}: topic does not parse: {e}"));
        let got = policy.allows(action, &topic, group);
        report.check(got == expected, || {
            format!("{name}: expected allowed={expected}, got {got}")
        });
        // Whatever may be delivered must also pass the subscribe-time check
        // (which ignores deny rules, so the converse does not hold).
        if action == Action::Subscribe && got {
            assert!(
                policy.may_subscribe(&Pattern::from(topic.clone()), group),
                "{name}: allowed for delivery but refused by may_subscribe"
            );
        }
    }
    report.finish(file, cases.len());
}

#[test]
fn scopes_json() {
    let file = "scopes.json";
    let v = load(file);
    assert_known_keys(&v, file, &["about", "cases"]);
    let cases = array(&v, "cases", file);
    let mut report = Report::default();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("cases[{i}]");
        assert_known_keys(case, &name, &["scopes", "scope", "rules", "error"]);
        let (input, result) = match (case.get("scopes"), case.get("scope")) {
            (Some(list), None) => {
                let list: Vec<&str> = list
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: `scopes` is not an array"))
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .unwrap_or_else(|| panic!("{name}: a scope is not a string"))
                    })
                    .collect();
                (format!("scopes {list:?}"), Policy::from_scopes(&list))
            }
            (None, Some(Value::String(s))) => (format!("scope {s:?}"), Policy::from_scope_str(s)),
            _ => panic!("{name}: needs exactly one of `scopes` (array) or `scope` (string)"),
        };
        let name = format!("cases[{i}] {input}");
        let wants_error = match case.get("error") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => panic!("{name}: `error` must be a bool, got {other}"),
        };
        if wants_error {
            assert!(
                case.get("rules").is_none(),
                "{name}: a case cannot expect both an error and rules"
            );
            report.check(result.is_err(), || {
                format!("{name}: expected an error, got {result:?}")
            });
            continue;
        }
        let rules = case
            .get("rules")
            .unwrap_or_else(|| panic!("{name}: needs `rules` or `error: true`"));
        let expected = Policy::from_json(&serde_json::json!({ "rules": rules }))
            .unwrap_or_else(|e| panic!("{name}: expected rules do not parse: {e}"));
        report.check(result.as_ref().is_ok_and(|p| *p == expected), || {
            format!("{name}: expected {expected:?}, got {result:?}")
        });
    }
    report.finish(file, cases.len());
}
