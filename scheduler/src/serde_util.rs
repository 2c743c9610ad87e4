//! Serde helpers shared by the model and the spec: CIDs travel as their
//! string form (the `cid` crate's own serde form is bytes, which JSON and
//! YAML would show as arrays of numbers), 32-byte values as hex.

use std::collections::BTreeSet;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use shoal_storage::Cid;

pub(crate) fn parse_cid(s: &str) -> Result<Cid, String> {
    Cid::try_from(s).map_err(|e| format!("invalid cid {s:?}: {}", e.to_string().to_lowercase()))
}

/// A CID as a string.
pub(crate) mod cid {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(c: &Cid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&c.to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        let s = String::deserialize(d)?;
        parse_cid(&s).map_err(D::Error::custom)
    }
}

/// An optional CID as a string or null.
pub(crate) mod opt_cid {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(c: &Option<Cid>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_some(&c.to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cid>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => parse_cid(&s).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

/// A set of CIDs as a list of strings.
pub(crate) mod cid_set {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(c: &BTreeSet<Cid>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(c.iter().map(|c| c.to_string()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<Cid>, D::Error> {
        Vec::<String>::deserialize(d)?.iter().map(|s| parse_cid(s).map_err(D::Error::custom)).collect()
    }
}

/// A map from names to CIDs, as strings.
pub(crate) mod cid_map {
    use super::*;
    use std::collections::BTreeMap;

    pub(crate) fn serialize<S: Serializer>(m: &BTreeMap<String, Cid>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, c)| (k, c.to_string())))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Cid>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, s)| parse_cid(&s).map(|c| (k, c)).map_err(D::Error::custom))
            .collect()
    }
}

/// An optional 32-byte value as 64 hex digits or null.
pub(crate) mod opt_hex32 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::hex32(&s).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

/// Decodes 64 hex digits.
pub(crate) fn hex32(s: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| format!("expected 64 hex digits, got {s:?}: {e}"))?;
    Ok(out)
}
