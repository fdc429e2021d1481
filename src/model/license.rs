//! The account license (thinger profile): a `Server::"instance"` entity that iotgate builds
//! from `[license]` and the directory, so policies can compare
//! `resource.licensed_accounts` with `resource.max_accounts`.
//!
//! ```text
//! [license] max_accounts, licensed_roles ─┐
//! directory: principals with a licensed role ─┴─▶ Server::"instance" { max_accounts,
//!                                                  licensed_accounts } ─▶ directory
//! ```

use cedar_policy::EntityTypeName;

use crate::config::LicenseConfig;
use crate::model::directory::{Directory, Val};
use crate::model::schema::{Catalog, Type};

/// Id of the server entity.
pub(crate) const SERVER_ID: &str = "instance";

/// Builds the server entity and adds it to the directory.
///
/// # Errors
/// The schema has no `<namespace>::Server` type with `Long` attributes `max_accounts` and
/// `licensed_accounts`.
pub(crate) fn install(
    license: &LicenseConfig,
    principal_type: &EntityTypeName,
    catalog: &Catalog,
    directory: &mut Directory,
) -> Result<(), String> {
    let namespace = principal_type.namespace();
    let server_type = if namespace.is_empty() {
        "Server".to_string()
    } else {
        format!("{namespace}::Server")
    };
    let long = |attr: &str| {
        catalog
            .entity_types
            .get(&server_type)
            .and_then(|attrs| attrs.get(attr))
            .is_some_and(|a| a.ty == Type::Long)
    };
    if !long("max_accounts") || !long("licensed_accounts") {
        return Err(format!(
            "[license] needs entity type `{server_type}` with Long attributes `max_accounts` and `licensed_accounts` in the schema"
        ));
    }
    let licensed = directory
        .nodes()
        .filter(|n| n.uid().type_name() == principal_type)
        .filter(|n| {
            n.string_attr("role")
                .is_some_and(|r| license.licensed_roles.iter().any(|l| l == r))
        })
        .count();
    let long = |n: u64| Val::Long(i64::try_from(n).unwrap_or(i64::MAX));
    directory.insert_synthetic(
        &server_type,
        SERVER_ID,
        vec![
            ("max_accounts", long(license.max_accounts)),
            ("licensed_accounts", long(licensed as u64)),
        ],
    )?;
    Ok(())
}
