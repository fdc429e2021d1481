//! What decisions read, loaded and checked once per snapshot.
//!
//! ```text
//! *.cedarschema ──schema──▶ Catalog ──┬─▶ routes (route table: HTTP → action, resource, context)
//!                                     ├─▶ policy (policies, strictly validated, indexed)
//!                                     └─▶ directory (entities) ──▶ license (the Server entity)
//! cedar_core: the Cedar core entities the directory and slices are built from
//! ```

pub(crate) mod cedar_core;
pub(crate) mod directory;
pub(crate) mod index;
pub(crate) mod license;
pub(crate) mod policy;
pub(crate) mod routes;
pub(crate) mod schema;
