//! Authorization: one request in, one decision out.
//!
//! ```text
//! snapshot (model + versions) ──decision::begin/decide──▶ entity slice ──model::index──▶
//!   candidate policy sets ──evaluate (Cedar)──▶ Verdict ──▶ Decision
//!   (cache: decisions and tokens)
//! ```

pub(crate) mod cache;
pub(crate) mod decision;
pub(crate) mod evaluate;
pub(crate) mod snapshot;
