//! `iotgate import` and `iotgate mock`: read a platform into files; stand in for one.
//!
//! ```text
//! import thinger|central --url --token-file --out [--check]
//!   ─▶ platform::{thinger,central}::import ─▶ World::files ─▶ write (or plan with --check)
//!   ─▶ one line per file (+ added, ~ changed, - removed), warnings, a summary
//! import … --to postgres://… [--out] ─▶ the entities as one batch of the shared directory
//!   (Postgres::import), the policy files (if --out) as above
//!   exit 0 written / nothing to change; 1 --check found changes; 2 the server or a file failed
//! mock thinger|central [--listen] [--state] ─▶ platform::mock::Platform::serve until Ctrl-C
//! ```

use std::io::Write;
use std::path::Path;

use crate::commands::cli::{
    ExitStatus, ImportArgs, ImportCommon, ImportFrom, MockArgs, MockFlavor,
};
use crate::model::schema::Catalog;
use crate::platform::mock::{Flavor, Platform};
use crate::platform::{self, FileChange, Source, World};

/// The bundled thinger schema, for `import thinger` without `--schema`.
pub(crate) const THINGER_SCHEMA: &str = include_str!("../../schema/thinger.cedarschema");
/// The built-in states of `mock`.
pub(crate) const THINGER_STATE: &str = include_str!("../../examples/thinger/platform.json");
const CENTRAL_STATE: &str = include_str!("../../examples/central/platform.json");

/// Runs `import`.
pub(crate) async fn run(args: &ImportArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    let (common, world) = match read(args).await {
        Ok(read) => read,
        Err(message) => {
            writeln!(out, "error: {message}")?;
            return Ok(ExitStatus::Error);
        }
    };
    for warning in &world.warnings {
        writeln!(out, "warning: {warning}")?;
    }
    let mut changed = false;
    if let Some(url) = &common.to {
        match to_shared(url, &world, common.check).await {
            Ok(line) => {
                changed = line.1;
                writeln!(out, "{}", line.0)?;
            }
            Err(e) => {
                writeln!(out, "error: {e}")?;
                return Ok(ExitStatus::Error);
            }
        }
    }
    let Some(folder) = &common.out else {
        return Ok(exit(common.check && changed));
    };
    let mut files = world.files();
    let owned: &[(&str, &str)] = match common.to {
        Some(_) => {
            files.retain(|rel, _| !rel.starts_with("directory"));
            &platform::IMPORT_OWNED[1..]
        }
        None => &platform::IMPORT_OWNED,
    };
    let done = match common.check {
        true => platform::plan(folder, &files, owned),
        false => platform::write(folder, &files, owned),
    };
    let changes = match done {
        Ok(changes) => changes,
        Err(e) => {
            writeln!(out, "error: {}: {e}", folder.display())?;
            return Ok(ExitStatus::Error);
        }
    };
    for (rel, change) in &changes {
        let mark = match change {
            FileChange::Added => '+',
            FileChange::Changed => '~',
            FileChange::Removed => '-',
        };
        writeln!(out, "{mark} {}", rel.display())?;
    }
    let entities = world.all_entities().count();
    let verb = if common.check {
        "would change"
    } else {
        "changed"
    };
    writeln!(
        out,
        "{entities} entities, {} project policy files; {} files {verb} in {}",
        world.policies.len(),
        changes.len(),
        folder.display()
    )?;
    Ok(exit(common.check && (changed || !changes.is_empty())))
}

/// `--check` found something to change: exit 1.
fn exit(would_change: bool) -> ExitStatus {
    match would_change {
        true => ExitStatus::Failed,
        false => ExitStatus::Ok,
    }
}

/// Writes the world's entities to the shared directory at `url` (its tables made first),
/// or with `check` counts what would change; the summary line, and whether anything
/// changes.
async fn to_shared(url: &str, world: &World, check: bool) -> Result<(String, bool), String> {
    let store = crate::store::postgres::Postgres::new(url).map_err(|e| format!("--to: {e}"))?;
    store.migrate().await.map_err(|e| format!("--to: {e}"))?;
    let entities = world.all_entities().map(platform::Entity::put).collect();
    let done = store
        .import(&world.types, entities, check)
        .await
        .map_err(|e| format!("--to: {e}"))?;
    let changed = done.written + done.removed > 0;
    let line = match (check, done.seq) {
        (true, _) => format!(
            "shared directory: would write {} entities and remove {}",
            done.written, done.removed
        ),
        (false, Some(seq)) => format!(
            "shared directory: {} entities written, {} removed (seq {seq})",
            done.written, done.removed
        ),
        (false, None) => "shared directory: nothing to change".to_string(),
    };
    Ok((line, changed))
}

async fn read(args: &ImportArgs) -> Result<(&ImportCommon, World), String> {
    let source = |c: &ImportCommon| -> Result<Source, String> {
        let token = crate::config::problem::read_text(&c.token_file).map_err(|p| p.to_string())?;
        Source::new(&c.url, &token)
    };
    match &args.from {
        ImportFrom::Thinger {
            common,
            original,
            schema,
        } => {
            let catalog = match schema {
                Some(path) => Catalog::load(path).map(|(c, _)| c),
                None => Catalog::parse(Path::new("thinger.cedarschema"), THINGER_SCHEMA),
            }
            .map_err(|p| p.to_string())?;
            let options = platform::thinger::Options {
                original: original.clone(),
            };
            let world = platform::thinger::import(&source(common)?, &catalog, &options).await?;
            Ok((common, world))
        }
        ImportFrom::Central { common, root } => {
            let world = platform::central::import(&source(common)?, root).await?;
            Ok((common, world))
        }
    }
}

/// Runs `mock` until Ctrl-C.
pub(crate) async fn mock(args: &MockArgs, out: &mut dyn Write) -> std::io::Result<ExitStatus> {
    let (flavor, built_in) = match args.flavor {
        MockFlavor::Thinger => (Flavor::Thinger, THINGER_STATE),
        MockFlavor::Central => (Flavor::Central, CENTRAL_STATE),
    };
    let text = match &args.state {
        Some(path) => match crate::config::problem::read_text(path) {
            Ok(t) => t,
            Err(p) => {
                writeln!(out, "error: {p}")?;
                return Ok(ExitStatus::Error);
            }
        },
        None => built_in.to_string(),
    };
    let platform = serde_json::from_str(&text)
        .map_err(|e| e.to_string())
        .and_then(|seed| Platform::new(flavor, &seed));
    let platform = match platform {
        Ok(p) => p,
        Err(e) => {
            writeln!(out, "error: the state: {e}")?;
            return Ok(ExitStatus::Error);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            writeln!(out, "error: cannot listen on {}: {e}", args.listen)?;
            return Ok(ExitStatus::Error);
        }
    };
    writeln!(
        out,
        "mock {:?} API on http://{}",
        args.flavor,
        listener.local_addr()?
    )?;
    out.flush()?;
    tokio::select! {
        () = platform.serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitStatus::Ok)
}
