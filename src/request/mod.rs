//! Strict readers of what a client sends, shared by the decision and the forwarding:
//! nothing a lenient server could read differently is accepted.
//!
//! ```text
//! path, query ──uri──▶ decoded segments, parameters      (400)
//! headers     ──headers──▶ refused, forwarded or dropped  (400, 415)
//! body        ──json──▶ one object, no repeated key       (400)
//! a token anywhere but where iotgate reads it ──token::has_jwt──▶ a second credential (400)
//! ```

pub(crate) mod headers;
pub(crate) mod json;
pub(crate) mod token;
pub(crate) mod uri;
