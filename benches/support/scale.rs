//! A Thinger-like world at scale, written to disk as a deployable profile: the bundled
//! thinger schema, routes and base policies, `projects` project policies, and a directory
//! of `entities` entities (users, projects, devices shared through projects).
//!
//! Deterministic: the same sizes give the same files.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The world's sizes and where it was written.
pub(crate) struct World {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub users: usize,
    pub projects: usize,
    pub devices: usize,
}

/// Proptest's deterministic generator: the same sizes give the same world.
struct Rng(proptest::test_runner::TestRng);

impl Rng {
    fn new() -> Rng {
        use proptest::test_runner::{RngAlgorithm, TestRng};
        Rng(TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    }

    fn below(&mut self, n: usize) -> usize {
        use proptest::prelude::Rng as _;
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Member of project `p` (a guest account).
pub(crate) fn member(p: usize) -> String {
    format!("m{}", p)
}

/// Owner account of project `p` (a developer).
pub(crate) fn owner(p: usize, users: usize) -> String {
    format!("u{}", p % (users / 2).max(1))
}

/// Writes a world with `policies` project policies and about `entities` entities.
pub(crate) fn write(policies: usize, entities: usize) -> World {
    let world = write_directory_world(entities);
    world.add_policies(policies);
    world
}

/// Writes the schema, base policies and a directory of about `entities` entities; add
/// policy sets with [`World::add_policies`].
pub(crate) fn write_directory_world(entities: usize) -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // accounts: half developers (u*), half guests (m*, one per project)
    let projects = (entities / 20).max(1);
    let users = (entities / 10).max(projects + 2);
    let devices = entities.saturating_sub(users + projects).max(projects);
    copy(&root().join("schema"), &d.join("schema"));
    copy(&root().join("policies/thinger"), &d.join("base"));
    std::fs::remove_dir_all(d.join("base/projects")).unwrap();
    std::fs::create_dir_all(d.join("directory")).unwrap();
    std::fs::write(d.join("secret.key"), "bench-secret").unwrap();
    write_directory(&d.join("directory/world.json"), users, projects, devices);
    let world = World {
        config: d.join("iotgate-0.toml"),
        dir,
        users,
        projects,
        devices,
    };
    world.write_config(0);
    world
}

impl World {
    /// Adds a folder of `n` project policies and a config `iotgate-<n>.toml` using it
    /// (and makes it this world's `config`).
    pub(crate) fn add_policies(&self, n: usize) -> PathBuf {
        let folder = self.dir.path().join(format!("projects-{n}"));
        std::fs::create_dir_all(&folder).unwrap();
        write_policies(&folder.join("generated.cedar"), n, self.users);
        self.write_config(n)
    }

    fn write_config(&self, n: usize) -> PathBuf {
        let config = self.dir.path().join(format!("iotgate-{n}.toml"));
        let projects = if n == 0 {
            String::new()
        } else {
            format!(", \"projects-{n}\"")
        };
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n\
                 [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"secret.key\"\nprincipal_claim = \"usr\"\n\
                 [policy]\nschema = \"schema/thinger.cedarschema\"\nroutes = \"schema/thinger.routes.toml\"\n\
                 policies = [\"base\"{projects}]\ndirectory = [\"directory\"]\nreload = \"off\"\n\
                 [cache]\nmax_entries = 100000\nttl_seconds = 300\n[license]\nmax_accounts = 1000000\n"
            ),
        )
        .unwrap();
        config
    }

    /// A device shared through project 0, and that project's member: an allowed read.
    pub(crate) fn shared_device(&self) -> (String, String) {
        (
            member(0),
            format!("/v1/users/{}/devices/d0", owner(0, self.users)),
        )
    }
}

/// Project `p` gets a permit for its member and (for every other policy) a forbid.
fn write_policies(path: &Path, n: usize, users: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for k in 0..n {
        let p = k / 2;
        let project = format!("{}@p{p}", owner(p, users));
        if k % 2 == 0 {
            writeln!(f, "@id(\"{project}/allow\")\npermit (principal == Thinger::User::\"{}\", action in [Thinger::Action::\"ReadDeviceStatus\", Thinger::Action::\"AccessDeviceResources\"], resource in Thinger::Project::\"{project}\");", member(p)).unwrap();
        } else {
            writeln!(f, "@id(\"{project}/deny\")\n@reason(\"no calls\")\nforbid (principal == Thinger::User::\"{}\", action == Thinger::Action::\"CallDeviceResource\", resource in Thinger::Project::\"{project}\");", member(p)).unwrap();
        }
    }
}

fn write_directory(path: &Path, users: usize, projects: usize, devices: usize) {
    let mut rng = Rng::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let user = |id: &str| format!("{{\"type\":\"Thinger::User\",\"id\":\"{id}\"}}");
    writeln!(f, "[").unwrap();
    let mut first = true;
    let mut emit = |f: &mut std::io::BufWriter<std::fs::File>, line: String| {
        if !first {
            writeln!(f, ",").unwrap();
        }
        first = false;
        write!(f, "{line}").unwrap();
    };
    let developers = (users / 2).max(1);
    for u in 0..developers {
        emit(&mut f, format!("{{\"uid\":{},\"attrs\":{{\"role\":\"developer\",\"enabled\":true}},\"parents\":[]}}", user(&format!("u{u}"))));
    }
    for m in 0..users - developers {
        emit(
            &mut f,
            format!(
                "{{\"uid\":{},\"attrs\":{{\"role\":\"user\",\"enabled\":true}},\"parents\":[]}}",
                user(&member(m))
            ),
        );
    }
    for p in 0..projects {
        let o = owner(p, users);
        emit(&mut f, format!("{{\"uid\":{{\"type\":\"Thinger::Project\",\"id\":\"{o}@p{p}\"}},\"attrs\":{{\"owner\":{}}},\"parents\":[]}}", user(&o)));
    }
    for d in 0..devices {
        // device d belongs to the owner of project d % projects and is shared through it
        let p = d % projects;
        let o = owner(p, users);
        let extra = rng.below(projects);
        let parents = if rng.below(4) == 0 && extra != p {
            format!("{{\"type\":\"Thinger::Project\",\"id\":\"{o}@p{p}\"}},{{\"type\":\"Thinger::Project\",\"id\":\"{}@p{extra}\"}}", owner(extra, users))
        } else {
            format!("{{\"type\":\"Thinger::Project\",\"id\":\"{o}@p{p}\"}}")
        };
        emit(&mut f, format!("{{\"uid\":{{\"type\":\"Thinger::Device\",\"id\":\"{o}/d{d}\"}},\"attrs\":{{\"owner\":{}}},\"parents\":[{parents}]}}", user(&o)));
    }
    writeln!(f, "\n]").unwrap();
}

#[path = "../../tests/common/fs.rs"]
mod fs;
use fs::copy_dir as copy;

/// Sizes from a comma-separated environment variable, or the defaults.
pub(crate) fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Resident set size of this process, in bytes (Linux).
pub(crate) fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
