//! Strict readers of what a client sends, shared by the decision and the forwarding:
//! nothing a lenient server could read differently is accepted.
//!
//! ```text
//! path, query ──uri──▶ decoded segments, parameters      (400)
//! headers     ──headers──▶ refused, forwarded or dropped  (400, 415)
//! body        ──json | form──▶ one object, no repeated key (400)
//! a token anywhere but where iotgate reads it ──token::has_jwt──▶ a second credential (400)
//! ```

pub(crate) mod form;
pub(crate) mod headers;
pub(crate) mod json;
pub(crate) mod subrequest;
pub(crate) mod token;
pub(crate) mod uri;

/// How a route that reads body fields parses the body:
/// `body = "json" | "json-array" | "form"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyFormat {
    /// One JSON object (`application/json`, `application/*+json`).
    #[default]
    Json,
    /// One JSON array (same media types), read whole as `{body}` (Thinger's
    /// `PUT …/projects` with `["owner@project", …]`).
    JsonArray,
    /// `application/x-www-form-urlencoded` pairs, read as an object of strings.
    Form,
}

impl BodyFormat {
    /// Parses a body in this format: an object, or an array for `json-array`.
    ///
    /// # Errors
    /// Malformed, of the other shape, or a repeated key (the message says which).
    pub(crate) fn parse(self, bytes: &[u8]) -> Result<serde_json::Value, String> {
        match self {
            BodyFormat::Json => json::object(bytes).map(serde_json::Value::Object),
            BodyFormat::JsonArray => json::array(bytes),
            BodyFormat::Form => form::object(bytes).map(serde_json::Value::Object),
        }
    }
}

/// Marks a request that came over TLS (`[server.tls]`), with the client certificate, if
/// one was sent and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSession {
    /// The verified client certificate.
    pub client: Option<TlsClient>,
}

/// The verified client certificate of a TLS connection (`[server.tls] client_ca_file`),
/// which routes read as `{tls.subject}` and `{tls.cn}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClient {
    /// The subject distinguished name (`CN=sensor-7, O=Acme`).
    pub subject: String,
    /// The subject's common name.
    pub cn: Option<String>,
}
