//! Following the platform: `iotgate import` against the stand-in servers (`iotgate mock`'s
//! code, holding a platform's state and applying the mutations it is sent), checked by the
//! profiles' decision suites on the imported world; write-through checked against what the
//! server really holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::attacks::root;
use crate::directory::{call, config, load};
use crate::support::{get, iotgate, send, Served};

/// A stand-in platform on an ephemeral port, with `seed` as its state.
pub(crate) async fn mock(
    flavor: iotgate::MockFlavor,
    seed: &Value,
) -> (Arc<iotgate::MockPlatform>, SocketAddr) {
    let platform = iotgate::MockPlatform::new(flavor, seed).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(platform.clone().serve(listener));
    (platform, addr)
}

/// The example platform state of a profile.
pub(crate) fn seed(profile: &str) -> Value {
    let text =
        std::fs::read_to_string(root().join(format!("examples/{profile}/platform.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs the binary off the runtime's threads (the mock answers on them).
async fn run(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        iotgate(&args)
    })
    .await
    .unwrap()
}

fn import_args(profile: &str, addr: SocketAddr, dir: &Path, extra: &[&str]) -> Vec<String> {
    let token = dir.join("token");
    std::fs::write(&token, "admin-token\n").unwrap();
    let mut args: Vec<String> = [
        "import",
        profile,
        "--url",
        &format!("http://{addr}"),
        "--token-file",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(token.display().to_string());
    args.push("--out".into());
    args.push(dir.join("out").display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Every file under `dir`, by relative path.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), text);
            }
        }
    }
    out
}

/// `dir/base`: the bundled thinger policies without the hand-written project files.
fn base_policies(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for entry in std::fs::read_dir(root().join("policies/thinger")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, base.join(path.file_name().unwrap())).unwrap();
        }
    }
    base
}

/// A profile's example config with the imported directory (and, for thinger, the bundled
/// policies without the hand-written project files, plus the imported ones).
fn imported_config(profile: &str, dir: &Path) -> PathBuf {
    let r = root();
    let out = dir.join("out");
    let policies = match profile {
        "thinger" => {
            let base = base_policies(dir);
            format!(
                "\"{}\", \"{}\"",
                base.display(),
                out.join("policies").display()
            )
        }
        _ => format!("\"{}\"", r.join("policies/central").display()),
    };
    let example =
        std::fs::read_to_string(r.join(format!("examples/{profile}/iotgate.toml"))).unwrap();
    let text: Vec<String> = example
        .lines()
        .map(|line| match line.split_once(" = ").map(|(k, _)| k.trim()) {
            Some("policies") => format!("policies = [{policies}]"),
            Some("directory") => format!("directory = [\"{}\"]", out.join("directory").display()),
            _ => line
                .replace("\"../../", &format!("\"{}/", r.display()))
                .replace(
                    "_file = \"",
                    &format!("_file = \"{}/examples/{profile}/", r.display()),
                ),
        })
        .collect();
    let path = dir.join("iotgate.toml");
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

async fn suite_passes_on_the_imported_world(profile: &str, extra: &[&str], cases: usize) {
    let (_platform, addr) = mock(flavor(profile), &seed(profile)).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run(import_args(profile, addr, dir.path(), extra)).await;
    assert_eq!(code, 0, "{text}");
    let config = imported_config(profile, dir.path());
    let suite = root().join(format!("examples/{profile}/checks.toml"));
    let (code, text) = run(vec![
        "check".into(),
        "--config".into(),
        config.display().to_string(),
        suite.display().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("{cases} passed, 0 failed")),
        "{text}"
    );
}

fn flavor(profile: &str) -> iotgate::MockFlavor {
    match profile {
        "thinger" => iotgate::MockFlavor::Thinger,
        _ => iotgate::MockFlavor::Central,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_thinger_suite_passes_on_a_world_imported_from_the_server() {
    suite_passes_on_the_imported_world("thinger", &["--original", "acme"], 150).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_central_suite_passes_on_a_world_imported_from_the_server() {
    suite_passes_on_the_imported_world("central", &["--root", "acme"], 355).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_is_byte_stable_and_check_reports_what_a_server_change_would_change() {
    let (platform, addr) = mock(iotgate::MockFlavor::Thinger, &seed("thinger")).await;
    let dir = tempfile::tempdir().unwrap();
    let args = |extra: &[&str]| import_args("thinger", addr, dir.path(), extra);
    let (code, text) = run(args(&[])).await;
    assert_eq!(code, 0, "{text}");
    let first = tree(&dir.path().join("out"));
    assert_eq!(first.len(), 4, "{first:?}");
    let (code, text) = run(args(&[])).await;
    assert_eq!(
        (code, text.contains("0 files changed")),
        (0, true),
        "{text}"
    );
    assert_eq!(
        tree(&dir.path().join("out")),
        first,
        "the same state, the same bytes"
    );
    let (code, text) = run(args(&["--check"])).await;
    assert_eq!(
        (code, text.contains("0 files would change")),
        (0, true),
        "{text}"
    );

    // changed on the server directly: a new account, a project gone
    platform.put(
        "/v1/users",
        "zed",
        json!({"user": "zed", "role": "user", "enabled": true}),
    );
    platform.remove("/v1/users/erin/projects", "fleet");
    let (code, text) = run(args(&["--check"])).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("~ directory/users.json"), "{text}");
    assert!(text.contains("~ directory/resources.json"), "{text}");
    assert!(
        text.contains("- policies/projects/erin@fleet.cedar"),
        "{text}"
    );
    assert_eq!(
        tree(&dir.path().join("out")),
        first,
        "--check writes nothing"
    );
    let (code, text) = run(args(&[])).await;
    assert_eq!(code, 0, "{text}");
    let now = tree(&dir.path().join("out"));
    assert!(now[Path::new("directory/users.json")].contains("\"zed\""));
    assert!(!now.contains_key(Path::new("policies/projects/erin@fleet.cedar")));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_an_import_cannot_express_exactly_is_narrowed_never_widened() {
    let mut state = seed("thinger");
    state["users"].as_array_mut().unwrap().extend([
        json!({"user": "dom", "role": "domain_admin", "enabled": true}),
        json!({"user": "bad/name", "role": "admin", "enabled": true}),
    ]);
    let members = state["accounts"]["dave"]["projects"][0]["members"]
        .as_array_mut()
        .unwrap();
    members.extend([
        // asset groups restrict the member: the import cannot say which assets
        json!({"member": "carol", "enabled": true, "groups": ["north"],
               "allow": {"Device": {"*": "*"}}}),
        // a sub-resource permission object
        json!({"member": "gina", "enabled": true,
               "allow": {"Device": {"*": [{"name": "temperature"}]}}}),
        // a disabled membership
        json!({"member": "frank", "enabled": false, "allow": {"*": {"*": "*"}}}),
        // a named device and a wildcard action
        json!({"member": "olivia", "enabled": true, "allow": {"Device": {"lab": "Read*"}},
               "deny": {"Device": {"lab": ["ReadDeviceResource"]}}}),
        // text that would be Cedar if it landed in the file: a type key, a named id
        json!({"member": "m1", "enabled": true,
               "allow": {"Device\n@id(\"pwn\")\npermit(principal,action,resource);\n//": {"*": "*"}}}),
        json!({"member": "m2", "enabled": true,
               "allow": {"Device": {"d1\npermit(principal,action,resource);\n//": "*"}}}),
        // a Deny naming no action of the type cannot be honoured: no permit either
        json!({"member": "m3", "enabled": true, "allow": {"*": {"*": "*"}},
               "deny": {"Device": {"*": ["DeleteDevices"]}}}),
        // a role whose name is not plain (its Deny could not be read), asset groups not as a list
        json!({"member": "m4", "enabled": true, "allow": {"*": {"*": "*"}}, "roles": ["no delete"]}),
        json!({"member": "m5", "enabled": true, "allow": {"*": {"*": "*"}}, "groups": "g1"}),
    ]);
    let (_platform, addr) = mock(iotgate::MockFlavor::Thinger, &state).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run(import_args("thinger", addr, dir.path(), &[])).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "warning: account `dom`: role \"domain_admin\" imported as the guest role `user`"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: account \"bad/name\" skipped: not a plain id"),
        "{text}"
    );
    assert!(
        text.contains("member `carol` gets no permit: asset groups"),
        "{text}"
    );
    assert!(text.contains("member `gina` gets no permit"), "{text}");
    assert!(
        text.contains("member `frank` gets no permit: the membership is disabled"),
        "{text}"
    );
    let files = tree(&dir.path().join("out"));
    assert!(files[Path::new("directory/users.json")]
        .contains(r#"{"uid":{"type":"Thinger::User","id":"dom"},"attrs":{"role":"user","enabled":true},"parents":[]}"#));
    let policy = &files[Path::new("policies/projects/dave@greenhouse.cedar")];
    assert!(
        !policy.contains("pwn") && !policy.contains("permit(principal"),
        "{policy}"
    );
    // and what it wrote loads
    let config = imported_config("thinger", dir.path());
    let (code, out) = run(vec![
        "validate".into(),
        "--config".into(),
        config.display().to_string(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    for member in ["carol", "gina", "frank", "m1", "m2", "m3", "m4", "m5"] {
        assert!(
            !policy.contains(&format!(
                "permit (\n  principal == Thinger::User::\"{member}\""
            )),
            "{policy}"
        );
    }
    assert!(
        policy.contains("@id(\"dave@greenhouse/olivia/allow/Device/lab\")"),
        "{policy}"
    );
    assert!(
        policy.contains("resource == Thinger::Device::\"dave/lab\""),
        "{policy}"
    );
    assert!(
        policy.contains("when { resource in Thinger::Project::\"dave@greenhouse\" }"),
        "{policy}"
    );
    assert!(
        policy.contains("Thinger::Action::\"ReadDeviceStatus\""),
        "Read* expanded: {policy}"
    );
    assert!(
        policy.contains("@id(\"dave@greenhouse/olivia/deny/Device/lab\")"),
        "{policy}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn write_through_matches_what_the_server_holds() {
    let (platform, addr) = mock(iotgate::MockFlavor::Thinger, &seed("thinger")).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = load(&config(dir.path(), &format!("http://{addr}"), 5));
    let create = json!({"user": "hank", "role": "member", "email": "h@x", "password": "p"});
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(create)).await,
        200
    );
    assert_eq!(
        platform.item("/v1/users", "hank").unwrap()["role"],
        "member"
    );
    // a guest now (not 401 `unknown_account`): guests develop nothing of their own
    assert_eq!(
        call(&gw, "hank", "GET", "/v1/users/hank/devices", None).await,
        403
    );
    let device = json!({"device": "probe", "name": "Probe", "type": "Generic"});
    assert_eq!(
        call(&gw, "dave", "POST", "/v1/users/dave/devices", Some(device)).await,
        200
    );
    assert!(platform.item("/v1/users/dave/devices", "probe").is_some());
    assert_eq!(
        call(&gw, "dave", "GET", "/v1/users/dave/devices/probe", None).await,
        200
    );
    assert_eq!(
        call(&gw, "dave", "DELETE", "/v1/users/dave/devices/probe", None).await,
        200
    );
    assert!(platform.item("/v1/users/dave/devices", "probe").is_none());
    // sharing a device with projects: the body is the list of projects
    let share = |list: Value| {
        call(
            &gw,
            "dave",
            "PUT",
            "/v1/users/dave/devices/lab/projects",
            Some(list),
        )
    };
    assert_eq!(
        call(&gw, "erin", "GET", "/v1/users/dave/devices/lab", None).await,
        403
    );
    assert_eq!(share(json!(["dave@greenhouse"])).await, 200);
    assert_eq!(
        platform.item("/v1/users/dave/devices", "lab").unwrap()["projects"],
        json!(["dave@greenhouse"])
    );
    assert_eq!(
        call(&gw, "erin", "GET", "/v1/users/dave/devices/lab", None).await,
        200,
        "shared now"
    );
    assert_eq!(share(json!([])).await, 200);
    assert_eq!(
        call(&gw, "erin", "GET", "/v1/users/dave/devices/lab", None).await,
        403,
        "unshared"
    );
    for bad in [
        json!(["erin@fleet"]),
        json!(["dave@a/b"]),
        json!([7]),
        json!({"projects": []}),
    ] {
        assert_eq!(share(bad.clone()).await, 400, "{bad}");
    }
    assert_eq!(
        platform.item("/v1/users/dave/devices", "lab").unwrap()["projects"],
        json!([]),
        "never forwarded"
    );
    // removed on the server directly: the directory still has it until a sync
    let again = json!({"user": "acme2", "role": "member"});
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(again.clone())).await,
        200
    );
    platform.remove("/v1/users", "acme2");
    assert_eq!(
        call(&gw, "olivia", "POST", "/v1/users", Some(again)).await,
        409,
        "iotgate: exists"
    );
}

/// `iotgate serve` with a thinger sync from `platform` (the upstream too): the bundled
/// policies without the hand-written project files, an empty directory folder, the project
/// files the sync writes in `synced/`.
fn serve_synced(platform: SocketAddr) -> Served {
    serve_synced_with(platform, "", "")
}

/// [`serve_synced`] with lines added to `[server]` and at the end of the config.
fn serve_synced_with(platform: SocketAddr, server: &str, tail: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let r = root();
    base_policies(dir.path());
    for d in ["synced", "directory"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::write(dir.path().join("sync.token"), "admin-token\n").unwrap();
    let config = dir.path().join("iotgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://{platform}\"\n{server}\n\
             [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{r}/examples/thinger/secret.key\"\nprincipal_claim = \"usr\"\n\
             [policy]\nschema = \"{r}/schema/thinger.cedarschema\"\nroutes = \"{r}/schema/thinger.routes.toml\"\n\
             policies = [\"base\", \"synced\"]\ndirectory = [\"directory\"]\nreload = \"off\"\n\
             [license]\nmax_accounts = 5\n\
             [directory]\njournal = \"state/directory.journal\"\n\
             [directory.sync]\nfrom = \"thinger\"\nurl = \"http://{platform}\"\ntoken_file = \"sync.token\"\n\
             interval_seconds = 3600\noriginal = \"acme\"\npolicies = \"synced\"\n{tail}",
            r = r.display()
        ),
    )
    .unwrap();
    Served::spawn(dir, &config)
}

/// Decide mode learns of a platform change only through the sync: an allowed `resync` route
/// wakes it once the front proxy has had time to forward the request (nothing is forwarded
/// here: the change is made on the mock, as the platform would make it).
#[tokio::test(flavor = "multi_thread")]
async fn decide_mode_wakes_the_sync_after_allowing_a_resync_route() {
    let (platform, addr) = mock(iotgate::MockFlavor::Thinger, &seed("thinger")).await;
    let decide = "mode = \"decide\"\ntrusted_proxies = [\"127.0.0.1/32\"]";
    let served = serve_synced_with(addr, decide, "[server.decide]\nfrom = \"nginx\"\n");
    let ask = |who: &str, method: &str, path: &str| {
        let bearer = crate::attacks::token(json!({"usr": who}));
        http::Request::get(served.url("/auth"))
            .header("authorization", format!("Bearer {bearer}"))
            .header("x-original-method", method)
            .header("x-original-uri", path)
            .body(iotgate::full(""))
            .unwrap()
    };
    let sensor = "/v1/users/dave/devices/sensor1";
    assert_eq!(
        send(ask("bob", "GET", sensor)).await.0,
        200,
        "bob is in the project"
    );
    let project = "/v1/users/dave/projects/greenhouse";
    assert_eq!(send(ask("dave", "DELETE", project)).await.0, 200);
    // the front proxy forwards; the platform deletes the project
    platform.remove("/v1/users/dave/projects", "greenhouse");
    for _ in 0..60 {
        if send(ask("bob", "GET", sensor)).await.0 == 403 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the sync never ran: {}", served.status().await);
}

async fn status_of(served: &Served, who: &str, path: &str) -> u16 {
    let bearer = crate::attacks::token(json!({"usr": who}));
    send(get(&served.url(path), Some(&bearer))).await.0.as_u16()
}

async fn sync_now(served: &Served) -> (u16, Value) {
    let (status, _, body) = served.admin_post("/sync").await;
    (status.as_u16(), serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_follows_changes_made_on_the_server_directly_and_an_outage_keeps_the_last_directory()
{
    let (platform, addr) = mock(iotgate::MockFlavor::Thinger, &seed("thinger")).await;
    let served = serve_synced(addr);
    // the first sync ran before serving: an empty directory folder, the server's world
    assert_eq!(
        status_of(&served, "bob", "/v1/users/dave/devices/sensor1").await,
        200
    );
    assert_eq!(
        status_of(&served, "erin", "/v1/users/dave/devices/lab").await,
        403
    );
    assert_eq!(
        status_of(&served, "carol", "/v1/users/erin/devices/truck1").await,
        200
    );
    assert!(served
        .dir
        .path()
        .join("synced/projects/dave@greenhouse.cedar")
        .is_file());

    // on the server directly: bob leaves the project, carol is disabled, lab joins the project
    platform.remove("/v1/users/dave/projects/greenhouse/members", "bob");
    platform.put(
        "/v1/users",
        "carol",
        json!({"user": "carol", "role": "member", "enabled": false}),
    );
    let mut lab = platform.item("/v1/users/dave/devices", "lab").unwrap();
    lab["projects"] = json!(["dave@greenhouse"]);
    platform.put("/v1/users/dave/devices", "lab", lab);
    assert_eq!(
        status_of(&served, "carol", "/v1/users/erin/devices/truck1").await,
        200,
        "not yet"
    );
    let (code, status) = sync_now(&served).await;
    assert_eq!(
        (
            code,
            status["changes"].as_u64(),
            status["policy_files"].as_u64()
        ),
        (200, Some(2), Some(1)),
        "{status}"
    );
    assert_eq!(
        status_of(&served, "bob", "/v1/users/dave/devices/sensor1").await,
        403,
        "bob left the project"
    );
    assert_eq!(
        status_of(&served, "carol", "/v1/users/erin/devices/truck1").await,
        403,
        "carol is disabled"
    );
    assert_eq!(
        status_of(&served, "erin", "/v1/users/dave/devices/lab").await,
        200,
        "lab is shared now"
    );
    // a member removed through iotgate: the sync runs by itself right after
    assert_eq!(
        status_of(&served, "erin", "/v1/users/dave/devices/sensor1").await,
        200
    );
    let remove =
        http::Request::delete(served.url("/v1/users/dave/projects/greenhouse/members/erin"))
            .header(
                "authorization",
                format!("Bearer {}", crate::attacks::token(json!({"usr": "dave"}))),
            )
            .body(iotgate::full(""))
            .unwrap();
    assert_eq!(send(remove).await.0, 200);
    let started = std::time::Instant::now();
    while status_of(&served, "erin", "/v1/users/dave/devices/sensor1").await != 403 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "no resync"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // a sync that finds nothing new changes nothing
    let (code, status) = sync_now(&served).await;
    assert_eq!(
        (
            code,
            status["changes"].as_u64(),
            status["policy_files"].as_u64()
        ),
        (200, Some(0), Some(0)),
        "{status}"
    );

    // generated files the reload refuses (here: another file of the set is broken) are put
    // back, so what is on disk is what serves; the next good run applies them
    let synced = served
        .dir
        .path()
        .join("synced/projects/dave@greenhouse.cedar");
    let before = std::fs::read_to_string(&synced).unwrap();
    let broken = served.dir.path().join("base/broken.cedar");
    std::fs::write(&broken, "permit (").unwrap();
    let carol =
        json!({"member": "carol", "enabled": true, "allow": {"Device": {"*": "ReadDeviceStatus"}}});
    platform.put("/v1/users/dave/projects/greenhouse/members", "carol", carol);
    let (code, status) = sync_now(&served).await;
    assert_eq!(code, 502, "{status}");
    assert!(
        status["last_error"].as_str().unwrap().contains("put back"),
        "{status}"
    );
    assert_eq!(std::fs::read_to_string(&synced).unwrap(), before);
    std::fs::remove_file(&broken).unwrap();
    let (code, status) = sync_now(&served).await;
    assert_eq!(
        (code, status["policy_files"].as_u64()),
        (200, Some(1)),
        "{status}"
    );
    assert!(std::fs::read_to_string(&synced).unwrap().contains("carol"));

    // the subscription's account is not among those read (renamed, a typo in `original`):
    // nothing applies, so its protection is never stripped
    let acme = platform.item("/v1/users", "acme").unwrap();
    platform.remove("/v1/users", "acme");
    let (code, status) = sync_now(&served).await;
    assert_eq!(code, 502, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("no account `acme`"),
        "{status}"
    );
    platform.put("/v1/users", "acme", acme);

    // an answer cut short (paging, a token without the scope) would empty the directory:
    // refused
    platform.page_lists(Some(1));
    let (code, status) = sync_now(&served).await;
    assert_eq!(code, 502, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("would remove"),
        "{status}"
    );
    assert_eq!(
        status_of(&served, "dave", "/v1/users/dave/devices").await,
        200,
        "nothing removed"
    );
    platform.page_lists(None);

    // the platform's API is down: the last directory keeps deciding, and it shows
    platform.fail(true);
    let (code, status) = sync_now(&served).await;
    assert_eq!(code, 502, "{status}");
    assert!(
        status["last_error"].as_str().unwrap().contains("503"),
        "{status}"
    );
    assert_eq!(
        status_of(&served, "dave", "/v1/users/dave/devices/lab").await,
        503,
        "the upstream is down too, but iotgate allowed it"
    );
    let (code, ready) = served.admin_get("/readyz").await;
    assert_eq!(code, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert!(
        ready["degraded"][0].as_str().unwrap().starts_with("sync: "),
        "{ready}"
    );
    assert!(served.status().await["sync"]["last_success"].is_string());
    let metrics = served.admin_get("/metrics").await.1;
    assert!(
        metrics.contains("iotgate_sync_runs_total{result=\"ok\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("iotgate_sync_runs_total{result=\"failed\"} 4"),
        "{metrics}"
    );
    platform.fail(false);
    assert_eq!(sync_now(&served).await.0, 200);
    let ready: Value = serde_json::from_str(&served.admin_get("/readyz").await.1).unwrap();
    assert!(ready.get("degraded").is_none(), "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_central_user_listed_under_two_orgs_is_left_out_and_the_root_must_be_the_one_asked() {
    let mut state = seed("central");
    let users = state["users"].as_array_mut().unwrap();
    let tom = users.iter_mut().find(|u| u["id"] == "tom").unwrap();
    // under spain and, higher, emea: either would be a guess, emea would widen
    tom["org"] = json!(["spain", "emea"]);
    let (platform, addr) = mock(iotgate::MockFlavor::Central, &state).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run(import_args(
        "central",
        addr,
        dir.path(),
        &["--root", "acme"],
    ))
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: user `tom` listed under two orgs: skipped"),
        "{text}"
    );
    let users = &tree(&dir.path().join("out"))[Path::new("directory/users.json")];
    assert!(!users.contains("\"tom\""), "{users}");
    assert!(users.contains("\"sam\""), "{users}");
    // the root answers as another organization: nothing is written
    platform.put("/api/orgs", "acme", json!({"id": "emea"}));
    let (code, text) = run(import_args(
        "central",
        addr,
        dir.path(),
        &["--root", "acme", "--check"],
    ))
    .await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("the answer is another organization"),
        "{text}"
    );
}
