//! Node constraints: conditions on a node's labels that a job requires.
//!
//! ```text
//! zone=eu           the label equals the value
//! arch!=arm         the label is absent or differs
//! tier in (a,b)     the label is one of the values
//! tier notin (a,b)  the label is absent or none of the values
//! gpu-vendor        the label exists (any value)
//! !gpu-vendor       the label does not exist
//! ```
//!
//! Keys are 1 to [`MAX_KEY_LEN`] characters of `[A-Za-z0-9._/-]`; values
//! are 0 to [`MAX_VALUE_LEN`] characters without whitespace, `,`, `(`,
//! `)`, `=` or `!`. Spaces around operators are ignored. A constraint
//! displays in the canonical form above (sets sorted), which parses back
//! to the same constraint.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest label key.
pub const MAX_KEY_LEN: usize = 128;
/// Longest label value.
pub const MAX_VALUE_LEN: usize = 256;
/// Most values in an `in`/`notin` set.
pub const MAX_SET_LEN: usize = 64;

/// A condition on a node's labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Constraint {
    /// `k=v`
    Eq(String, String),
    /// `k!=v` (true when the label is absent)
    NotEq(String, String),
    /// `k in (a,b)`
    In(String, BTreeSet<String>),
    /// `k notin (a,b)` (true when the label is absent)
    NotIn(String, BTreeSet<String>),
    /// `k`
    Exists(String),
    /// `!k`
    NotExists(String),
}

/// Why a constraint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("invalid constraint {constraint:?}: {reason}; expected one of `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`")]
pub struct Error {
    /// The constraint as given.
    pub constraint: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Constraint {
    /// Whether a node with `labels` satisfies the constraint.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Eq(k, v) => labels.get(k) == Some(v),
            Constraint::NotEq(k, v) => labels.get(k) != Some(v),
            Constraint::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Constraint::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Constraint::Exists(k) => labels.contains_key(k),
            Constraint::NotExists(k) => !labels.contains_key(k),
        }
    }

    /// The label key it tests.
    pub fn key(&self) -> &str {
        match self {
            Constraint::Eq(k, _)
            | Constraint::NotEq(k, _)
            | Constraint::In(k, _)
            | Constraint::NotIn(k, _)
            | Constraint::Exists(k)
            | Constraint::NotExists(k) => k,
        }
    }
}

fn key(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the label key is empty".into());
    }
    if s.len() > MAX_KEY_LEN {
        return Err(format!("the label key is longer than {MAX_KEY_LEN} characters"));
    }
    if !s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("the label key {s:?} must start with a letter or digit"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))) {
        return Err(format!("the label key {s:?} contains {c:?} (use a-z, A-Z, 0-9, '.', '_', '/', '-')"));
    }
    Ok(s.to_string())
}

fn value(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() > MAX_VALUE_LEN {
        return Err(format!("the value is longer than {MAX_VALUE_LEN} characters"));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || matches!(c, ',' | '(' | ')' | '=' | '!')) {
        return Err(format!("the value {s:?} contains {c:?}"));
    }
    Ok(s.to_string())
}

fn set(s: &str) -> Result<BTreeSet<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| "the set must be in parentheses, like (a,b)".to_string())?;
    let values: Vec<&str> = inner.split(',').collect();
    if values.len() > MAX_SET_LEN {
        return Err(format!("the set has more than {MAX_SET_LEN} values"));
    }
    let mut out = BTreeSet::new();
    for v in values {
        let v = value(v)?;
        if v.is_empty() {
            return Err("the set has an empty value".into());
        }
        out.insert(v);
    }
    Ok(out)
}

/// Splits `k <word> rest` where the word is `in` or `notin` (or `not in`).
fn set_op(s: &str) -> Option<(&str, bool, &str)> {
    let open = s.find('(')?;
    let head = &s[..open];
    let mut words = head.split_whitespace();
    let k = words.next()?;
    let op: Vec<&str> = words.collect();
    let negated = match op.as_slice() {
        ["in"] => false,
        ["notin"] | ["not", "in"] => true,
        _ => return None,
    };
    Some((k, negated, &s[open..]))
}

impl FromStr for Constraint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Constraint, Error> {
        let err = |reason: String| Error { constraint: s.chars().take(MAX_KEY_LEN + MAX_VALUE_LEN).collect(), reason };
        let t = s.trim();
        if t.len() > MAX_KEY_LEN + MAX_VALUE_LEN * 4 {
            return Err(err("it is too long".into()));
        }
        if let Some((k, v)) = t.split_once("!=") {
            return Ok(Constraint::NotEq(key(k).map_err(err)?, value(v).map_err(err)?));
        }
        if let Some((k, v)) = t.split_once('=') {
            let v = v.strip_prefix('=').unwrap_or(v);
            return Ok(Constraint::Eq(key(k).map_err(err)?, value(v).map_err(err)?));
        }
        if let Some((k, negated, rest)) = set_op(t) {
            let (k, vs) = (key(k).map_err(err)?, set(rest).map_err(err)?);
            return Ok(if negated { Constraint::NotIn(k, vs) } else { Constraint::In(k, vs) });
        }
        if let Some(k) = t.strip_prefix('!') {
            return Ok(Constraint::NotExists(key(k).map_err(err)?));
        }
        if t.contains(char::is_whitespace) || t.contains('(') {
            return Err(err("it is not a known form".into()));
        }
        Ok(Constraint::Exists(key(t).map_err(err)?))
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |vs: &BTreeSet<String>| vs.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        match self {
            Constraint::Eq(k, v) => write!(f, "{k}={v}"),
            Constraint::NotEq(k, v) => write!(f, "{k}!={v}"),
            Constraint::In(k, vs) => write!(f, "{k} in ({})", join(vs)),
            Constraint::NotIn(k, vs) => write!(f, "{k} notin ({})", join(vs)),
            Constraint::Exists(k) => write!(f, "{k}"),
            Constraint::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Constraint, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn c(s: &str) -> Constraint {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(c("zone=eu"), Constraint::Eq("zone".into(), "eu".into()));
        assert_eq!(c(" zone == eu "), Constraint::Eq("zone".into(), "eu".into()));
        assert_eq!(c("arch!=arm"), Constraint::NotEq("arch".into(), "arm".into()));
        assert_eq!(c("tier in (b, a)"), Constraint::In("tier".into(), ["a".into(), "b".into()].into()));
        assert_eq!(c("tier notin (a)"), Constraint::NotIn("tier".into(), ["a".into()].into()));
        assert_eq!(c("tier not in (a)"), c("tier notin (a)"));
        assert_eq!(c("gpu-vendor"), Constraint::Exists("gpu-vendor".into()));
        assert_eq!(c("!gpu-vendor"), Constraint::NotExists("gpu-vendor".into()));
        assert_eq!(c("k8s.io/zone=x:1"), Constraint::Eq("k8s.io/zone".into(), "x:1".into()));
    }

    #[test]
    fn refuses_malformed_constraints_naming_them() {
        for bad in ["", "=eu", "zone=e u", "tier in a,b", "tier in ()", "tier maybe (a)", "a b", "!", "-x", "k=(v)"] {
            let e = bad.parse::<Constraint>().unwrap_err();
            assert!(e.to_string().starts_with(&format!("invalid constraint {bad:?}")), "{e}");
        }
    }

    #[test]
    fn matches_labels() {
        let l = labels(&[("zone", "eu"), ("arch", "x86"), ("tier", "a"), ("gpu-vendor", "nv")]);
        let empty = labels(&[]);
        for (s, on_l, on_empty) in [
            ("zone=eu", true, false),
            ("zone=us", false, false),
            ("arch!=arm", true, true),
            ("arch!=x86", false, true),
            ("tier in (a,b)", true, false),
            ("tier in (b)", false, false),
            ("tier notin (b)", true, true),
            ("tier notin (a)", false, true),
            ("gpu-vendor", true, false),
            ("!gpu-vendor", false, true),
        ] {
            assert_eq!(c(s).matches(&l), on_l, "{s}");
            assert_eq!(c(s).matches(&empty), on_empty, "{s} on no labels");
        }
    }

    #[test]
    fn serde_is_the_string_form() {
        let x = c("tier in (b,a)");
        assert_eq!(serde_json::to_string(&x).unwrap(), "\"tier in (a,b)\"");
        assert_eq!(serde_json::from_str::<Constraint>("\"tier in (a,b)\"").unwrap(), x);
        assert!(serde_json::from_str::<Constraint>("\"tier in\"").is_err());
    }

    fn arb_constraint() -> impl Strategy<Value = Constraint> {
        let k = "[a-z][a-z0-9._/-]{0,8}";
        let v = "[a-z0-9._:/-]{1,6}";
        let vs = proptest::collection::btree_set(v, 1..4);
        prop_oneof![
            (k, v).prop_map(|(k, v)| Constraint::Eq(k, v)),
            (k, v).prop_map(|(k, v)| Constraint::NotEq(k, v)),
            (k, vs.clone()).prop_map(|(k, v)| Constraint::In(k, v)),
            (k, vs).prop_map(|(k, v)| Constraint::NotIn(k, v)),
            k.prop_map(Constraint::Exists),
            k.prop_map(Constraint::NotExists),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back(x in arb_constraint()) {
            prop_assert_eq!(x.to_string().parse::<Constraint>().unwrap(), x);
        }

        #[test]
        fn negations_are_complements(k in "[a-z]{1,3}", v in "[a-z]{1,3}", l in proptest::collection::btree_map("[a-z]{1,3}", "[a-z]{1,3}", 0..4)) {
            prop_assert_ne!(Constraint::Eq(k.clone(), v.clone()).matches(&l), Constraint::NotEq(k.clone(), v.clone()).matches(&l));
            let set: BTreeSet<String> = [v].into();
            prop_assert_ne!(Constraint::In(k.clone(), set.clone()).matches(&l), Constraint::NotIn(k.clone(), set).matches(&l));
            prop_assert_ne!(Constraint::Exists(k.clone()).matches(&l), Constraint::NotExists(k).matches(&l));
        }
    }
}
