//! Strict JSON for request bodies a decision reads.
//!
//! ```text
//! body bytes ──object()──▶ serde_json::Value (an object) | error (→ 400)
//! ```
//!
//! Parsers disagree on duplicate keys (`{"role":"user","role":"admin"}`: most keep the last,
//! some the first; case-insensitive binders also merge `role` and `Role`), so a body with a
//! key repeated at any depth, in any ASCII case, is refused: iotgate and the upstream must
//! read the same values. Keys with control characters (`"role\u0000"`, which C-string
//! servers read as `role`) are refused too. The top level must be an object, since fields read
//! `{body.a.b}` paths (or, for a `json-array` route, an array read whole as `{body}`).

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as one JSON object with no duplicate key at any depth.
///
/// # Errors
/// Not JSON, not an object, or a repeated key (the message says which).
pub(crate) fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match strict(bytes)? {
        Value::Object(map) => Ok(map),
        _ => Err("the body is not a JSON object".into()),
    }
}

/// Parses `bytes` as one JSON array with no duplicate key at any depth.
///
/// # Errors
/// Not JSON, not an array, or a repeated key.
pub(crate) fn array(bytes: &[u8]) -> Result<Value, String> {
    match strict(bytes)? {
        v @ Value::Array(_) => Ok(v),
        _ => Err("the body is not a JSON array".into()),
    }
}

fn strict(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Strict
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| e.to_string())
}

/// A `Value` seed that refuses duplicate keys.
#[derive(Clone, Copy)]
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        // each key as lowercased once, to find a repeat in any case without comparing every
        // pair (a 64 KiB body can hold thousands of keys)
        let mut folded: HashMap<String, String> = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.chars().any(char::is_control) {
                return Err(de::Error::custom(format_args!(
                    "key {key:?} has a control character"
                )));
            }
            if let Some(other) = folded.insert(key.to_ascii_lowercase(), key.clone()) {
                return Err(match other == key {
                    true => de::Error::custom(format_args!("duplicate key `{key}`")),
                    false => {
                        de::Error::custom(format_args!("duplicate key `{key}` (as `{other}`)"))
                    }
                });
            }
            let value = map.next_value_seed(Strict)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_and_duplicates_anywhere_are_refused() {
        let ok = object(br#"{"role":"member","nested":{"a":[1,{"b":2}]},"x":null}"#).unwrap();
        assert_eq!(ok["nested"]["a"][1]["b"], 2);
        for (bad, want) in [
            (
                &br#"{"role":"user","role":"admin"}"#[..],
                "duplicate key `role`",
            ),
            (br#"{"a":{"b":1,"b":2}}"#, "duplicate key `b`"),
            (br#"{"a":[{"c":1,"c":1}]}"#, "duplicate key `c`"),
            (
                br#"{"role":"member","Role":"admin"}"#,
                "duplicate key `Role` (as `role`)",
            ),
            (
                br#"{"role":"member","r\u006fle":"admin"}"#,
                "duplicate key `role`",
            ),
            (br#"{"role\u0000":"admin"}"#, "control character"),
            (br#"["role","admin"]"#, "not a JSON object"),
            (br#""admin""#, "not a JSON object"),
            (br#"{"a":1} {"b":2}"#, "trailing"),
            (b"{\"a\":", "EOF"),
        ] {
            let err = object(bad).unwrap_err();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
