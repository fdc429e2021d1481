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
    parse(bytes, Strict { exact_only: false })
}

/// Parses `bytes` as one JSON value with no key given twice in the same object (a
/// platform's API answer, read by `import` and sync): an answer that says two things is
/// refused. Keys in another case or with control characters pass: they are the data of one
/// member or account, which the import then refuses on its own.
///
/// # Errors
/// Not JSON, or a key given twice.
pub(crate) fn answer(bytes: &[u8]) -> Result<Value, String> {
    parse(bytes, Strict { exact_only: true })
}

fn parse(bytes: &[u8], seed: Strict) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    seed.deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| e.to_string())
}

/// A `Value` seed that refuses duplicate keys: in any ASCII case and keys with control
/// characters too, unless `exact_only`.
#[derive(Clone, Copy)]
struct Strict {
    exact_only: bool,
}

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
        while let Some(item) = seq.next_element_seed(self)? {
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
            if self.exact_only {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
                }
                let value = map.next_value_seed(self)?;
                out.insert(key, value);
                continue;
            }
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
            let value = map.next_value_seed(self)?;
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

    #[test]
    fn platform_answers_refuse_only_a_key_given_twice() {
        let one = answer(br#"[{"allow":{"Device":{},"device":{},"x\u0000":1}}]"#).unwrap();
        assert_eq!(one[0]["allow"].as_object().unwrap().len(), 3);
        for bad in [
            &br#"[{"deny":{"Device":{"*":["DeleteDevice"]},"Device":{}}}]"#[..],
            br#"{"a":[{"b":1,"\u0062":2}]}"#,
        ] {
            assert!(answer(bad).unwrap_err().contains("duplicate key"));
        }
        assert!(array(br#"{"a":1}"#)
            .unwrap_err()
            .contains("not a JSON array"));
        assert_eq!(array(br#"["a@b"]"#).unwrap(), serde_json::json!(["a@b"]));
    }
}
