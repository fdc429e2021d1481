//! Authorization: one request in, one decision out.
//!
//! ```text
//! snapshot (model + versions) ──decision::begin/decide──▶ entity slice ──model::index──▶
//!   candidate policy sets ──evaluate (Cedar)──▶ Verdict ──▶ Decision
//!   (cache: decisions and tokens)
//! ```

pub mod cache;
pub mod decision;
pub mod evaluate;
pub mod snapshot;
