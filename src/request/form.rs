//! Strict `application/x-www-form-urlencoded` bodies (OAuth token requests, HTML forms),
//! read as a JSON object of strings so routes read them with `{body.name}` like JSON.
//!
//! ```text
//! body bytes ──object()──▶ {"grant_type": "password", ...} | error (→ 400)
//! ```
//!
//! The rules are the JSON body's: a name repeated in any ASCII case
//! (`grant_type=password&Grant_Type=client_credentials`) is refused, since servers keep the
//! first, the last or both; so are names with control characters, escapes that are not
//! UTF-8, raw non-ASCII bytes and raw `;` (which old servers split pairs on), and a body that
//! starts like JSON (a server that sniffs would read other values). `+` is a space. Servers
//! that merge query and form parameters would let the query override a form value, so
//! [`in_query`] finds a form name the query also has.

use serde_json::{Map, Value};

use crate::request::uri::form_decode;

/// Parses a form body into an object of string values.
///
/// # Errors
/// A malformed pair or a repeated name (the message says which).
pub(crate) fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the form body is not UTF-8")?;
    if !text.is_ascii() || text.contains(';') {
        return Err("the form body has a raw non-ASCII byte or `;`; percent-encode it".into());
    }
    if text.trim_start().starts_with(['{', '[']) {
        return Err("the form body looks like JSON".into());
    }
    let mut map = Map::new();
    let mut folded = std::collections::HashSet::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decode(raw_name).ok_or("a form name is not percent-encoded UTF-8")?;
        let value = form_decode(raw_value)
            .ok_or_else(|| format!("the value of `{name}` is not percent-encoded UTF-8"))?;
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err("a form name is empty or has a control character".into());
        }
        if !folded.insert(name.to_ascii_lowercase()) {
            return Err(format!("form name `{name}` is repeated (in some case)"));
        }
        map.insert(name, Value::String(value));
    }
    Ok(map)
}

/// A name of `form` that the query also has (in any ASCII case), if any.
pub(crate) fn in_query(form: &Map<String, Value>, query: Option<&str>) -> Option<String> {
    let folded: std::collections::HashSet<String> =
        form.keys().map(|k| k.to_ascii_lowercase()).collect();
    query?
        .split('&')
        .filter_map(|pair| form_decode(pair.split_once('=').map_or(pair, |(k, _)| k)))
        .find(|name| folded.contains(&name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::{in_query, object};

    #[test]
    fn an_oauth_password_grant_reads_as_strings() {
        let map = object(b"grant_type=password&username=bob&password=p%40ss+word").unwrap();
        assert_eq!(map["grant_type"], "password");
        assert_eq!(map["password"], "p@ss word");
        assert_eq!(map.len(), 3);
        assert!(object(b"").unwrap().is_empty());
    }

    #[test]
    fn what_servers_could_read_differently_is_refused() {
        for bad in [
            &b"grant_type=password&grant_type=client_credentials"[..],
            b"grant_type=password&GRANT_TYPE=client_credentials",
            b"grant_type=password;grant_type=x",
            b"grant%00type=password",
            b"=x",
            b"name=%ZZ",
            b"name=%C3",
            "name=\u{e9}".as_bytes(),
            b"\xff=x",
            br#"{"grant_type":"client_credentials","pad":"&grant_type=password&"}"#,
            b" [1]",
        ] {
            assert!(object(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_query_may_not_name_what_the_form_holds() {
        let form = object(b"grant_type=password&username=bob").unwrap();
        for query in [
            "grant_type=client_credentials",
            "x=1&Grant_Type=y",
            "grant%5Ftype",
        ] {
            assert!(in_query(&form, Some(query)).is_some(), "{query}");
        }
        assert_eq!(in_query(&form, Some("client=web")), None);
        assert_eq!(in_query(&form, None), None);
    }
}
