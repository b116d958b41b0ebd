//! Access control (semantics.md §2): ordered allow/deny rules over topic
//! patterns, built from a token's `policy`, `scopes` or `scope` claim.

use serde::{Deserialize, Serialize};

use crate::object_only::{self, ObjectOnly};
use crate::topic::{Pattern, Topic, TopicError};

/// What a connection wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
}

/// The action a rule applies to: one action or `*` (both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleAction {
    #[serde(rename = "publish")]
    Publish,
    #[serde(rename = "subscribe")]
    Subscribe,
    #[serde(rename = "*")]
    Any,
}

impl RuleAction {
    fn covers(self, action: Action) -> bool {
        matches!(
            (self, action),
            (RuleAction::Any, _)
                | (RuleAction::Publish, Action::Publish)
                | (RuleAction::Subscribe, Action::Subscribe)
        )
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "publish" => Some(RuleAction::Publish),
            "subscribe" => Some(RuleAction::Subscribe),
            "*" => Some(RuleAction::Any),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One rule. `groups` (subscribe only) limits the rule to subscriptions whose
/// group is listed; `*` in the list means any group, including none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub effect: Effect,
    pub action: RuleAction,
    pub topics: Vec<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

impl Rule {
    pub fn allow(action: RuleAction, topics: Vec<Pattern>) -> Self {
        Rule {
            effect: Effect::Allow,
            action,
            topics,
            groups: None,
        }
    }

    /// Group constraints only concern subscriptions; publishing has no group.
    fn group_matches(&self, action: Action, group: Option<&str>) -> bool {
        match (&self.groups, action) {
            (None, _) | (Some(_), Action::Publish) => true,
            (Some(list), Action::Subscribe) => {
                list.iter().any(|g| g == "*" || Some(g.as_str()) == group)
            }
        }
    }
}

/// Why a policy, rule or scope could not be built. Any of these makes the
/// whole token invalid (`jwt_invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("scope {scope:?} is not ACTION:PATTERN")]
    ScopeShape { scope: String },
    #[error("scope {scope:?} has unknown action {action:?} (publish, subscribe or *)")]
    ScopeAction { scope: String, action: String },
    #[error("scope {scope:?} has an invalid pattern: {source}")]
    ScopePattern { scope: String, source: TopicError },
    #[error("policy is malformed: {0}")]
    Policy(String),
}

/// An immutable, ordered list of rules. The first rule whose action, topic
/// patterns and groups match decides; no match means deny.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Each rule must be a JSON object: serde would otherwise also read a
    /// rule from an array, by position.
    #[serde(deserialize_with = "object_only::list")]
    pub rules: Vec<Rule>,
    /// Set by the `admin` scope: the holder may use the ops API. It grants
    /// nothing on topics by itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// The scope that grants access to the ops API.
pub const ADMIN_SCOPE: &str = "admin";

impl Policy {
    /// Everything allowed: the development-mode default.
    pub fn allow_all() -> Self {
        Policy {
            rules: vec![Rule::allow(
                RuleAction::Any,
                vec![Pattern::parse("**").expect("`**` is a valid pattern")],
            )],
            admin: false,
        }
    }

    /// Nothing allowed.
    pub fn deny_all() -> Self {
        Policy::default()
    }

    /// Parses a `policy` claim (`{"rules":[...]}`); anything but an object
    /// of rule objects is malformed.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, AclError> {
        ObjectOnly::<Policy>::deserialize(value)
            .map(|policy| policy.0)
            .map_err(|e| AclError::Policy(e.to_string()))
    }

    /// Builds a policy from a `scopes` claim: each `ACTION:PATTERN`, split at
    /// the first `:`, becomes one allow rule in order. `admin` is accepted as
    /// the ops-API scope. Any malformed scope fails the whole list.
    pub fn from_scopes<S: AsRef<str>>(scopes: &[S]) -> Result<Self, AclError> {
        let mut policy = Policy::default();
        for scope in scopes {
            let scope = scope.as_ref();
            if scope == ADMIN_SCOPE {
                policy.admin = true;
                continue;
            }
            let Some((action, pattern)) = scope.split_once(':') else {
                return Err(AclError::ScopeShape {
                    scope: scope.to_owned(),
                });
            };
            if action.is_empty() || pattern.is_empty() {
                return Err(AclError::ScopeShape {
                    scope: scope.to_owned(),
                });
            }
            let action = RuleAction::parse(action).ok_or_else(|| AclError::ScopeAction {
                scope: scope.to_owned(),
                action: action.to_owned(),
            })?;
            let pattern = Pattern::parse(pattern).map_err(|source| AclError::ScopePattern {
                scope: scope.to_owned(),
                source,
            })?;
            policy.rules.push(Rule::allow(action, vec![pattern]));
        }
        Ok(policy)
    }

    /// Builds a policy from a `scope` claim: space-separated scopes.
    pub fn from_scope_str(scope: &str) -> Result<Self, AclError> {
        let scopes: Vec<&str> = scope.split_ascii_whitespace().collect();
        Policy::from_scopes(&scopes)
    }

    /// Is `action` on the concrete `topic` (with `group`, for subscriptions)
    /// allowed? First matching rule decides; no match denies.
    pub fn allows(&self, action: Action, topic: &Topic, group: Option<&str>) -> bool {
        self.rules
            .iter()
            .find(|rule| {
                rule.action.covers(action)
                    && rule.group_matches(action, group)
                    && rule.topics.iter().any(|p| p.matches(topic))
            })
            .is_some_and(|rule| rule.effect == Effect::Allow)
    }

    /// The subscribe-time check: could any event matching `pattern` ever be
    /// delivered to this subscription? True when the pattern intersects some
    /// allow rule for `subscribe` and this group. Deny rules are ignored here;
    /// the per-event [`Policy::allows`] check at delivery stays authoritative.
    pub fn may_subscribe(&self, pattern: &Pattern, group: Option<&str>) -> bool {
        self.rules.iter().any(|rule| {
            rule.effect == Effect::Allow
                && rule.action.covers(Action::Subscribe)
                && rule.group_matches(Action::Subscribe, group)
                && rule.topics.iter().any(|p| p.intersects(pattern))
        })
    }

    /// Shortcut for [`Policy::allows`] with [`Action::Publish`].
    pub fn may_publish(&self, topic: &Topic) -> bool {
        self.allows(Action::Publish, topic, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn subscribe_check_uses_intersection_and_groups() {
        let policy = Policy::from_scopes(&["subscribe:process.**", "publish:jobs.*"]).unwrap();
        assert!(policy.may_subscribe(&pattern("**"), None));
        assert!(policy.may_subscribe(&pattern("process.state"), Some("g")));
        assert!(!policy.may_subscribe(&pattern("jobs.*"), None));
        assert!(!policy.may_subscribe(&pattern("other.**"), None));

        let grouped: Policy = serde_json::from_str(
            r#"{"rules":[{"effect":"allow","action":"subscribe","topics":["jobs.**"],"groups":["workers"]}]}"#,
        )
        .unwrap();
        assert!(grouped.may_subscribe(&pattern("jobs.*"), Some("workers")));
        assert!(!grouped.may_subscribe(&pattern("jobs.*"), Some("other")));
        assert!(!grouped.may_subscribe(&pattern("jobs.*"), None));
    }

    #[test]
    fn malformed_rules_are_errors() {
        for bad in [
            r#"{"rules":[{"effect":"maybe","action":"publish","topics":["a"]}]}"#,
            r#"{"rules":[{"effect":"allow","action":"delete","topics":["a"]}]}"#,
            r#"{"rules":[{"effect":"allow","action":"publish","topics":["a..b"]}]}"#,
            r#"{"rules":[{"effect":"allow","action":"publish","topic":["a"]}]}"#,
            r#"{"rules":[{"effect":"allow","action":"publish","topics":"a"}]}"#,
            r#"{"rules":{}}"#,
            // Objects only: serde would otherwise read structs by position.
            r#"{"rules":[["allow","publish",["a"]]]}"#,
            r#"[[{"effect":"allow","action":"publish","topics":["a"]}]]"#,
            r#"{"rules":[{"effect":"allow","action":"publish","topics":["a"]}],"extra":1}"#,
            r#"{"rules":[{"effect":"allow","action":"publish","topics":["a"],"groups":"g"}]}"#,
            r#""publish:a""#,
            "null",
        ] {
            let value: serde_json::Value = serde_json::from_str(bad).unwrap();
            assert!(
                Policy::from_json(&value).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn admin_scope_grants_no_topics() {
        let policy = Policy::from_scope_str("admin subscribe:a").unwrap();
        assert!(policy.admin);
        assert_eq!(policy.rules.len(), 1);
        assert!(!policy.may_publish(&Topic::parse("a").unwrap()));
    }
}
