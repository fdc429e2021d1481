//! Strict reading of a request's path and query.
//!
//! ```text
//! "/v1/users/al%20ice/devices?x=1"
//!   ── segments() ──▶ ["v1", "users", "al ice", "devices"]   (or a PathError → 400)
//!   ── Query::parse ──▶ x = "1"                               (or a QueryError → 400)
//! ```
//!
//! Nothing is "fixed up": a path that a lenient server could read as another path
//! (`.`/`..`, `//`, encoded `/`, `\` or `.`, bad escapes, invalid UTF-8, control bytes) is
//! rejected, so the route iotgate authorizes is the one the upstream serves.

use std::borrow::Cow;

use crate::request::token::has_jwt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path does not start with `/`")]
    NotAbsolute,
    /// `//` or a trailing `/`.
    #[error("path has an empty segment")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    /// `%2F`.
    #[error("path has an encoded `/`")]
    EncodedSlash,
    /// `%2E`.
    #[error("path has an encoded `.`")]
    EncodedDot,
    /// `\` or `%5C`.
    #[error("path has a backslash")]
    Backslash,
    /// `%` not followed by two hex digits.
    #[error("path has a bad percent escape")]
    BadEscape,
    /// Decoded bytes are not UTF-8.
    #[error("path is not valid UTF-8")]
    NotUtf8,
    /// A control byte (`%00`..`%1F`, `%7F`).
    #[error("path has a control character")]
    ControlChar,
    /// A raw byte outside ASCII: RFC 3986 requires it percent-encoded, and servers decode
    /// and normalize raw text in their own ways (raw fullwidth `．．`).
    #[error("path has a raw non-ASCII byte (percent-encode it)")]
    NotAscii,
    /// `;` or `%3B`: path parameters, which Tomcat-style servers strip (`..;/`).
    #[error("path has a `;`")]
    Semicolon,
    /// `%25`: an escape of an escape, which servers that decode twice read as another path.
    #[error("path has an encoded `%`")]
    EncodedPercent,
    /// Text that Unicode compatibility normalization (NFKC) changes, such as fullwidth
    /// dots `．．` or letters: servers that normalize read another path.
    #[error("path is not in Unicode normalization form NFKC")]
    NotNormalized,
}

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Undecodable escapes or invalid UTF-8.
    #[error("query parameter `{0}` is not valid percent-encoded UTF-8")]
    BadEncoding(String),
    /// A parameter iotgate reads was given more than once.
    #[error("query parameter `{0}` is given more than once")]
    Repeated(String),
    /// A raw `;`, which some servers read as a parameter separator (`?a=1;authorization=…`),
    /// so they would see parameters iotgate did not.
    #[error("query has a `;` (send it as %3B)")]
    Semicolon,
    /// A parameter name that is not plain ASCII (`[A-Za-z0-9_.~-]`, after decoding): other
    /// parsers strip, decode again or fold such names into the ones iotgate reads
    /// (`??authorization=`, `%2561uthorization=`, `authorization[]=`, `+authorization=`).
    #[error("query parameter name `{0}` is not plain (letters, digits, `_.~-`)")]
    Name(String),
    /// A value with a control character (`%0D%0A`), which an upstream could copy into a
    /// header or a log line.
    #[error("query parameter `{0}` has a control character")]
    ControlChar(String),
    /// A token-shaped name or value besides the token parameter's value: a second
    /// credential the upstream could authenticate with.
    #[error("a second credential in query parameter `{0}`")]
    SecondCredential(String),
    /// A parameter that carries a credential or a method iotgate does not decide on
    /// (`access_token`, `api_key`, `_method`).
    #[error("query parameter `{0}` is not accepted")]
    Refused(String),
}

/// Query parameters that carry a credential other than the configured one, or override the
/// method: the upstream would act on them, iotgate would not.
const REFUSED_PARAMETERS: [&str; 5] = [
    "access_token",
    "api_key",
    "apikey",
    "_method",
    "x-http-method-override",
];

/// Refuses a query that servers could read differently from iotgate: a raw `;`, a name
/// that is not plain, a name or value that is not valid percent-encoded UTF-8 or has a
/// control character, a parameter in [`REFUSED_PARAMETERS`] (in any case) other than
/// `token_parameter`, or a token anywhere but in `token_parameter`'s value. Each pair is
/// decoded once.
///
/// # Errors
/// Any [`QueryError`] but `Repeated`.
pub fn check_query(raw: Option<&str>, token_parameter: Option<&str>) -> Result<(), QueryError> {
    let Some(raw) = raw else {
        return Ok(());
    };
    if raw.contains(';') {
        return Err(QueryError::Semicolon);
    }
    if !raw.is_ascii() {
        return Err(QueryError::BadEncoding("a raw non-ASCII byte".into()));
    }
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name =
            form_decode(k).ok_or_else(|| QueryError::BadEncoding(k.chars().take(32).collect()))?;
        let value = form_decode(v).ok_or_else(|| QueryError::BadEncoding(name.clone()))?;
        if value.chars().any(char::is_control) {
            return Err(QueryError::ControlChar(name));
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.~-".contains(&b))
        {
            return Err(QueryError::Name(name.chars().take(32).collect()));
        }
        let is_token = token_parameter.is_some_and(|t| t.eq_ignore_ascii_case(&name));
        if !is_token
            && REFUSED_PARAMETERS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&name))
        {
            return Err(QueryError::Refused(name));
        }
        if has_jwt(name.as_bytes()) || (!is_token && has_jwt(value.as_bytes())) {
            return Err(QueryError::SecondCredential(
                name.chars().take(32).collect(),
            ));
        }
    }
    Ok(())
}

/// Splits an absolute path into percent-decoded segments (the root `/` has none).
///
/// # Errors
/// Any of [`PathError`]; the path is never rewritten.
pub fn segments(path: &str) -> Result<Vec<Cow<'_, str>>, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/').map(segment).collect()
}

fn segment(raw: &str) -> Result<Cow<'_, str>, PathError> {
    // dots only (`...`, which servers that strip trailing dots read as `..`)
    match raw {
        "" => return Err(PathError::EmptySegment),
        _ if raw.bytes().all(|b| b == b'.') => return Err(PathError::DotSegment),
        _ => {}
    }
    if raw.contains('\\') {
        return Err(PathError::Backslash);
    }
    if raw.contains(';') {
        return Err(PathError::Semicolon);
    }
    if !raw.is_ascii() {
        return Err(PathError::NotAscii);
    }
    if !raw.contains('%') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = decode(raw).ok_or(PathError::BadEscape)?;
    for (i, b) in bytes.iter().enumerate() {
        let escaped = is_escaped(raw, i);
        match *b {
            b'/' => return Err(PathError::EncodedSlash),
            b'.' if escaped => return Err(PathError::EncodedDot),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'%' => return Err(PathError::EncodedPercent),
            0..=0x1f | 0x7f => return Err(PathError::ControlChar),
            _ => {}
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
    if text.bytes().all(|b| b == b'.' || b == b' ') {
        return Err(PathError::DotSegment);
    }
    if text.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    if !unicode_normalization::is_nfkc(&text) {
        return Err(PathError::NotNormalized);
    }
    Ok(Cow::Owned(text))
}

/// Whether the `index`-th decoded byte of `raw` came from a `%XX` escape.
fn is_escaped(raw: &str, index: usize) -> bool {
    let bytes = raw.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        let escaped = bytes[i] == b'%';
        if n == index {
            return escaped;
        }
        i += if escaped { 3 } else { 1 };
        n += 1;
    }
    false
}

/// Percent-decodes `raw`; `None` on a malformed escape.
fn decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A path segment or id as servers that match case-insensitively, or strip trailing dots
/// and spaces (Windows-style), read it.
pub(crate) fn fold(segment: &str) -> String {
    segment.trim_end_matches(['.', ' ']).to_ascii_lowercase()
}

/// A query string, decoded on demand (`application/x-www-form-urlencoded` rules).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    raw: &'a str,
}

impl<'a> Query<'a> {
    /// Wraps the raw query (without `?`).
    pub fn new(raw: Option<&'a str>) -> Self {
        Self {
            raw: raw.unwrap_or(""),
        }
    }

    /// The single value of `name`, if present.
    ///
    /// # Errors
    /// The parameter is repeated, or a name or value is not valid percent-encoded UTF-8.
    pub fn get(&self, name: &str) -> Result<Option<String>, QueryError> {
        self.find(name, |k| k == name)
    }

    /// The single value of `name` in any ASCII case (`Authorization=` is `authorization=`
    /// to a case-insensitive upstream): for credentials, which must be given once.
    ///
    /// # Errors
    /// As [`Query::get`], counting every spelling of the name.
    pub fn get_any_case(&self, name: &str) -> Result<Option<String>, QueryError> {
        self.find(name, |k| k.eq_ignore_ascii_case(name))
    }

    /// The raw query without the pairs named `name` in any ASCII case (the token
    /// parameter, before a query is recorded); `None` when nothing is left.
    pub fn without(&self, name: &str) -> Option<String> {
        let kept: Vec<&str> = self
            .raw
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|pair| {
                let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
                !form_decode(k).is_some_and(|k| k.eq_ignore_ascii_case(name))
            })
            .collect();
        (!kept.is_empty()).then(|| kept.join("&"))
    }

    fn find(
        &self,
        name: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Option<String>, QueryError> {
        let mut found = None;
        for pair in self.raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(key) = form_decode(k) else {
                continue;
            };
            if !matches(&key) {
                continue;
            }
            if found.is_some() {
                return Err(QueryError::Repeated(name.to_string()));
            }
            found = Some(form_decode(v).ok_or_else(|| QueryError::BadEncoding(name.to_string()))?);
        }
        Ok(found)
    }
}

/// `text` encoded for an `application/x-www-form-urlencoded` name or value (every byte but
/// ASCII letters, digits and `*-._` percent-encoded, spaces as `+`).
pub(crate) fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn form_decode(raw: &str) -> Option<String> {
    let plus = raw.replace('+', " ");
    String::from_utf8(decode(&plus)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_drops_every_spelling_of_the_parameter_and_keeps_the_rest_raw() {
        let q = Query::new(Some(
            "a=1&authorization=x&Authorization=y&%61uthorization=z&b=%20",
        ));
        assert_eq!(q.without("authorization").as_deref(), Some("a=1&b=%20"));
        assert_eq!(
            Query::new(Some("authorization=x")).without("authorization"),
            None
        );
    }

    #[test]
    fn form_encoding_round_trips() {
        for text in ["grant_type=password&x", "a b+c", "ünï/%"] {
            assert_eq!(form_decode(&form_encode(text)).as_deref(), Some(text));
        }
    }

    #[test]
    fn path_normalization_table() {
        use PathError::*;
        let cases: &[(&str, Result<&[&str], PathError>)] = &[
            ("/", Ok(&[])),
            ("/v1/users/alice", Ok(&["v1", "users", "alice"])),
            ("/v1/users/al%20ice", Ok(&["v1", "users", "al ice"])),
            ("/v1/users/%C3%A9", Ok(&["v1", "users", "é"])),
            ("/a/b.c/..d", Ok(&["a", "b.c", "..d"])),
            ("v1/users", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("/v1//users", Err(EmptySegment)),
            ("/v1/users/", Err(EmptySegment)),
            ("//v1", Err(EmptySegment)),
            ("/v1/./users", Err(DotSegment)),
            ("/v1/../users", Err(DotSegment)),
            ("/v1/users/..", Err(DotSegment)),
            ("/console/x/.../v1", Err(DotSegment)),
            ("/console/x/..%20/..%20/v1", Err(DotSegment)),
            ("/console/x/.%20", Err(DotSegment)),
            ("/console/%20", Err(DotSegment)),
            ("/v1/a%2Fb", Err(EncodedSlash)),
            ("/v1/a%2fb", Err(EncodedSlash)),
            ("/v1/%2e%2e/x", Err(EncodedDot)),
            ("/v1/%2E", Err(EncodedDot)),
            ("/v1/a%2Eb", Err(EncodedDot)),
            ("/v1/a\\b", Err(Backslash)),
            ("/v1/a%5cb", Err(Backslash)),
            ("/v1/a%zz", Err(BadEscape)),
            ("/v1/a%4", Err(BadEscape)),
            ("/v1/a%", Err(BadEscape)),
            ("/v1/%FF%FE", Err(NotUtf8)),
            ("/v1/%C3", Err(NotUtf8)),
            ("/v1/a%00b", Err(ControlChar)),
            ("/v1/a%0Ab", Err(ControlChar)),
            ("/v1/a%7F", Err(ControlChar)),
            ("/v2/files/..;/..;/v1/users", Err(Semicolon)),
            ("/v1/users/bob;authorization=x", Err(Semicolon)),
            ("/v1/a%3Bb", Err(Semicolon)),
            ("/v1/%252e%252e/users", Err(EncodedPercent)),
            ("/v1/a%25b", Err(EncodedPercent)),
            ("/v1/%EF%BC%8E%EF%BC%8E/users", Err(NotNormalized)),
            ("/v1/%EF%BD%81dmin", Err(NotNormalized)),
            ("/v1/caf%C3%A9", Ok(&["v1", "café"])),
            ("/v1/cafe%CC%81", Err(NotNormalized)),
            ("/v1/\u{ff0e}\u{ff0e}/users", Err(NotAscii)),
            ("/v1/caf\u{e9}", Err(NotAscii)),
            ("/v1/a%C2%85b", Err(ControlChar)),
        ];
        for (path, expected) in cases {
            let got = segments(path);
            match expected {
                Ok(want) => {
                    let got: Vec<String> = got
                        .unwrap_or_else(|e| panic!("{path}: {e}"))
                        .into_iter()
                        .map(Cow::into_owned)
                        .collect();
                    assert_eq!(&got, want, "{path}");
                }
                Err(want) => assert_eq!(got.unwrap_err(), *want, "{path}"),
            }
        }
    }

    #[test]
    fn query_values_are_decoded_and_must_be_unique() {
        let q = Query::new(Some("a=1&b=x+y%21&authorization=t.o.k&empty=&flag"));
        assert_eq!(q.get("a").unwrap().as_deref(), Some("1"));
        assert_eq!(q.get("b").unwrap().as_deref(), Some("x y!"));
        assert_eq!(q.get("empty").unwrap().as_deref(), Some(""));
        assert_eq!(q.get("flag").unwrap().as_deref(), Some(""));
        assert_eq!(q.get("missing").unwrap(), None);
        let q = Query::new(Some("a=1&a=2"));
        assert_eq!(q.get("a"), Err(QueryError::Repeated("a".into())));
        let q = Query::new(Some("a=%FF"));
        assert_eq!(q.get("a"), Err(QueryError::BadEncoding("a".into())));
        let q = Query::new(Some("%61=encoded-name"));
        assert_eq!(q.get("a").unwrap().as_deref(), Some("encoded-name"));
        assert_eq!(Query::new(None).get("a").unwrap(), None);
        let q = Query::new(Some("Token=1&x=2"));
        assert_eq!(q.get("token").unwrap(), None);
        assert_eq!(q.get_any_case("token").unwrap().as_deref(), Some("1"));
        let q = Query::new(Some("token=1&TOKEN=2"));
        assert_eq!(
            q.get_any_case("token"),
            Err(QueryError::Repeated("token".into()))
        );
    }

    #[test]
    fn queries_other_parsers_read_differently_are_refused() {
        let check = |q: &str| check_query(Some(q), Some("authorization"));
        assert_eq!(check("a=1;authorization=x"), Err(QueryError::Semicolon));
        for fine in [
            "a=1%3Bb",
            "authorization=x.y.z",
            "x=1&y=&z",
            "project=greenhouse&fields=a,b",
            "a.b_c-d~e=%25",
            "q=caf%C3%A9",
        ] {
            assert_eq!(check(fine), Ok(()), "{fine}");
        }
        assert_eq!(check_query(None, None), Ok(()));
        for name in [
            "?authorization=x",
            "%2561uthorization=x",
            "authorization%00=x",
            "+authorization=x",
            "authorization[]=x",
            "authorization%20=x",
            "%EF%BD%81uthorization=x",
            "=x",
        ] {
            assert!(
                matches!(check(name), Err(QueryError::Name(_))),
                "{name}: {:?}",
                check(name)
            );
        }
        for bad in ["%C1%A1uthorization=x", "a=%zz", "a=%FF", "%4=1"] {
            assert!(
                matches!(check(bad), Err(QueryError::BadEncoding(_))),
                "{bad}: {:?}",
                check(bad)
            );
        }
        for control in ["a=%0D%0Aset-cookie", "a=%00", "a=%C2%85"] {
            assert!(
                matches!(check(control), Err(QueryError::ControlChar(_))),
                "{control}"
            );
        }
        for refused in [
            "access_token=x",
            "Access_Token=x",
            "_method=DELETE",
            "api_key=k",
        ] {
            assert!(
                matches!(check(refused), Err(QueryError::Refused(_))),
                "{refused}"
            );
        }
        assert_eq!(
            check_query(Some("access_token=x"), Some("access_token")),
            Ok(())
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c3IiOiJvbGl2aWEifQ.c2ln";
        assert_eq!(check(&format!("Authorization={jwt}&x=1")), Ok(()));
        for second in [
            format!("access={jwt}"),
            format!("x=%65{}", &jwt[1..]),
            format!("{jwt}=1"),
        ] {
            assert!(
                matches!(check(&second), Err(QueryError::SecondCredential(_))),
                "{second}"
            );
        }
        let no_token_parameter = check_query(Some(&format!("authorization={jwt}")), None);
        assert!(matches!(
            no_token_parameter,
            Err(QueryError::SecondCredential(_))
        ));
    }
}
