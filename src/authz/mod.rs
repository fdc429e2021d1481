//! Authorization: one request in, one decision out.
//!
//! ```text
//! snapshot (model + versions) ──decision::begin/decide──▶ entity slice ──index──▶ candidate
//!   policy sets ──Cedar──▶ Verdict ──▶ Decision          (cache: decisions and tokens)
//! ```

pub mod cache;
pub mod decision;
pub mod index;
pub mod snapshot;
