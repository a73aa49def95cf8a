//! Scopes: what an API key may do, as `resource:action[:name]`.
//!
//! A granted scope may use `*` for a whole segment, a trailing `*` in the name
//! as a prefix match (`topics:produce:clicks.*`), and may leave the name out,
//! which grants every name (`topics:consume` = `topics:consume:*`). A required
//! scope (what an RPC needs) names everything and has no wildcards.

use std::fmt;

/// A parsed, validated scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    resource: String,
    action: String,
    name: Option<String>,
}

/// Why a scope string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope `{scope}`: {reason}")]
pub struct ScopeError {
    scope: String,
    reason: &'static str,
}

const MAX_LEN: usize = 300;

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Resource names follow Kafka's topic rule: `[a-zA-Z0-9._-]`, 1–249 chars.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Scope {
    /// Parses a scope as granted to a key (wildcards allowed).
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let err = |reason| ScopeError {
            scope: text.chars().take(MAX_LEN).collect(),
            reason,
        };
        if text.len() > MAX_LEN {
            return Err(err("longer than 300 characters"));
        }
        let mut parts = text.split(':');
        let (Some(resource), Some(action)) = (parts.next(), parts.next()) else {
            return Err(err("expected resource:action[:name]"));
        };
        let name = parts.next();
        if parts.next().is_some() {
            return Err(err("expected at most three `:`-separated parts"));
        }
        if !(resource == "*" || is_word(resource)) {
            return Err(err("resource must be lower-case letters, digits, `_`, or `*`"));
        }
        if !(action == "*" || is_word(action)) {
            return Err(err("action must be lower-case letters, digits, `_`, or `*`"));
        }
        if let Some(name) = name {
            let stem = name.strip_suffix('*').unwrap_or(name);
            if !(stem.is_empty() || is_name(stem)) || stem.contains('*') {
                return Err(err("name must be [a-zA-Z0-9._-], optionally ending in `*`"));
            }
        }
        Ok(Scope {
            resource: resource.to_owned(),
            action: action.to_owned(),
            name: name.map(str::to_owned),
        })
    }

    /// A required scope: no wildcards, name optional.
    pub fn required(resource: &str, action: &str, name: Option<&str>) -> Result<Scope, ScopeError> {
        let text = match name {
            Some(n) => format!("{resource}:{action}:{n}"),
            None => format!("{resource}:{action}"),
        };
        if text.contains('*') {
            return Err(ScopeError {
                scope: text,
                reason: "a required scope has no wildcards",
            });
        }
        Scope::parse(&text)
    }

    /// Whether holding `self` allows what `required` asks for.
    pub fn allows(&self, required: &Scope) -> bool {
        let segment = |granted: &str, wanted: &str| granted == "*" || granted == wanted;
        if !segment(&self.resource, &required.resource) || !segment(&self.action, &required.action) {
            return false;
        }
        match (&self.name, &required.name) {
            (None, _) => true,
            (Some(granted), Some(wanted)) => match granted.strip_suffix('*') {
                Some(prefix) => wanted.starts_with(prefix),
                None => granted == wanted,
            },
            // A grant for one name does not cover a request for all of them.
            (Some(granted), None) => granted == "*",
        }
    }
}

impl Scope {
    /// Whether holding `self` allows `resource:action` for at least one name.
    pub fn grants_some(&self, resource: &str, action: &str) -> bool {
        let segment = |granted: &str, wanted: &str| granted == "*" || granted == wanted;
        segment(&self.resource, resource) && segment(&self.action, action)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.action)?;
        if let Some(name) = &self.name {
            write!(f, ":{name}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn allows(granted: &str, required: &str) -> bool {
        Scope::parse(granted).unwrap().allows(&Scope::parse(required).unwrap())
    }

    #[test]
    fn exact_and_wildcard_matching() {
        assert!(allows("topics:produce:clicks", "topics:produce:clicks"));
        assert!(!allows("topics:produce:clicks", "topics:produce:views"));
        assert!(!allows("topics:produce:clicks", "topics:consume:clicks"));
        assert!(allows("topics:produce:*", "topics:produce:views"));
        assert!(allows("topics:produce", "topics:produce:views"));
        assert!(allows("topics:*", "topics:admin"));
        assert!(allows("topics:*:clicks", "topics:consume:clicks"));
        assert!(!allows("topics:*:clicks", "topics:consume:views"));
        assert!(allows("*:*", "keys:admin"));
        assert!(allows("topics:produce:clicks.*", "topics:produce:clicks.eu"));
        assert!(!allows("topics:produce:clicks.*", "topics:produce:click"));
        assert!(!allows("keys:admin", "topics:admin"));
        assert!(
            !allows("topics:produce:clicks", "topics:produce"),
            "one name is not all names"
        );
        assert!(allows("topics:produce:*", "topics:produce"));
    }

    #[test]
    fn malformed_scopes_are_rejected() {
        for bad in [
            "",
            "topics",
            "topics:",
            ":produce",
            "Topics:produce",
            "topics:produce:a:b",
            "topics:produce:a b",
            "topics:produce:cl*cks",
            "topics:pro*duce",
            "topics:produce:**",
            "topics:produce:/etc",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Scope::parse(&"a".repeat(301)).is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "topics:produce:clicks",
            "keys:admin",
            "tasks:*",
            "topics:consume:clicks.*",
        ] {
            assert_eq!(Scope::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn required_scopes_have_no_wildcards() {
        assert!(Scope::required("topics", "produce", Some("*")).is_err());
        assert!(Scope::required("topics", "produce", Some("clicks")).is_ok());
    }
}
