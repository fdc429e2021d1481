//! What decisions read, loaded and checked once per snapshot.
//!
//! ```text
//! *.cedarschema ──schema──▶ Catalog ──┬─▶ routes (route table: HTTP → action, resource, context)
//!                                     ├─▶ policy (policies, strictly validated, indexed)
//!                                     └─▶ directory (entities) ──▶ license (the Server entity)
//! cedar_core: the Cedar core entities the directory and slices are built from
//! ```

pub mod cedar_core;
pub mod directory;
pub mod index;
pub mod license;
pub mod policy;
pub mod routes;
pub mod schema;
