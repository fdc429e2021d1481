//! The deployment artifacts, checked against the config each one carries.
//!
//! ```text
//! deploy/kubernetes/*.yaml + scripts/kubernetes-configmaps.py ─▶ each volume mount written
//!     into a folder as kubelet shows it ─▶ the real `iotgate validate` reads the config there
//!     ─▶ ports, probes, shutdown budget, Services and NetworkPolicies agree with that config
//! examples/compose/compose.yaml, deploy/systemd/iotgate.service ─▶ the image's config
//!     (deploy/container/thinger.toml, at /etc/iotgate/thinger/iotgate.toml): secret, ports,
//!     state folder and upstream agree; `systemd-analyze verify` finds nothing to say
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of a YAML file of the repository.
fn documents(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

/// The one object of `kind` named `name`.
fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name}");
    found[0]
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    objects.iter().filter(move |o| o["kind"] == kind)
}

/// The ConfigMaps the script makes for the `thinger` profile.
fn config_maps() -> Vec<Value> {
    let made = Command::new("python3")
        .arg(root().join("scripts/kubernetes-configmaps.py"))
        .arg("thinger")
        .output()
        .expect("python3");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let list: Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    list["items"].as_array().unwrap().clone()
}

/// The Secret the manifests mount, as `kubectl create secret` makes it: the shape of
/// `secret.example.yaml` (whose value is empty, so it cannot be applied as is) with a value.
fn secret() -> Value {
    let mut example = documents("deploy/kubernetes/secret.example.yaml").remove(0);
    let data = example["stringData"].as_object_mut().unwrap();
    assert!(
        data.values().all(|v| v == ""),
        "the example carries no usable secret"
    );
    for value in data.values_mut() {
        *value = "a-secret-for-the-test-0123456789abcdef".into();
    }
    example
}

fn config(text: &str) -> toml::Table {
    toml::from_str(text).unwrap()
}

fn port(addr: &Value) -> u64 {
    addr.as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

fn toml_port(table: &toml::Table, key: &str) -> u64 {
    port(&Value::String(
        table[key]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string(),
    ))
}

fn seconds(server: &toml::Table, key: &str) -> i64 {
    server[key].as_integer().unwrap()
}

/// Writes what each of `container`'s volume mounts shows into `into`, as kubelet would (the
/// keys of a ConfigMap or Secret as files, an emptyDir as a folder); returns the writable
/// mount paths.
fn mount(pod: &Value, container: &Value, objects: &[Value], into: &Path) -> Vec<String> {
    let mut writable = Vec::new();
    for m in container["volumeMounts"].as_array().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        let dir = into.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("mount {path}: no volume {}", m["name"]));
        let data = if let Some(name) = volume["configMap"]["name"].as_str() {
            &named(objects, "ConfigMap", name)["data"]
        } else if let Some(name) = volume["secret"]["secretName"].as_str() {
            &named(objects, "Secret", name)["stringData"]
        } else {
            assert!(volume["emptyDir"].is_object(), "{volume}");
            writable.push(path.to_string());
            continue;
        };
        assert_eq!(m["readOnly"], true, "{path} is mounted read-only");
        for (key, text) in data.as_object().unwrap() {
            std::fs::write(dir.join(key), text.as_str().unwrap()).unwrap();
        }
    }
    writable
}

/// The config file a container's `serve --config F` names.
fn config_arg(args: &Value) -> String {
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["serve", "--config"], "{args:?}");
    args[2].to_string()
}

/// Runs `iotgate validate` on a config whose absolute paths are taken below `into`.
fn validate_below(into: &Path, config: &str) {
    let file = into.join(config.trim_start_matches('/'));
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{config} is not mounted: {e}"));
    let local = text.replace("= \"/", &format!("= \"{}/", into.display()));
    std::fs::write(&file, local).unwrap();
    let (code, out) = crate::support::iotgate(&["validate", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn container_ports(container: &Value) -> BTreeMap<String, u64> {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A Deployment's pod template, checked against the config it mounts: returns its labels and
/// the config's `[server]`.
fn check_pod(deployment: &Value, objects: &[Value]) -> (Value, toml::Table) {
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];
    let iotgate = container(pod, "iotgate");
    let dir = tempfile::tempdir().unwrap();
    let writable = mount(pod, iotgate, objects, dir.path());
    let path = config_arg(&iotgate["args"]);
    let text = std::fs::read_to_string(dir.path().join(path.trim_start_matches('/'))).unwrap();
    let cfg = config(&text);
    validate_below(dir.path(), &path);

    let server = cfg["server"].as_table().unwrap().clone();
    let ports = container_ports(iotgate);
    assert_eq!(ports["http"], toml_port(&server, "listen"));
    assert_eq!(ports["admin"], toml_port(&server, "admin_listen"));
    assert!(
        server["admin_listen"]
            .as_str()
            .unwrap()
            .starts_with("0.0.0.0:"),
        "kubelet probes the pod address"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(iotgate[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(iotgate[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let pre_stop = iotgate["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    let budget =
        pre_stop + seconds(&server, "shutdown_delay_seconds") + seconds(&server, "drain_seconds");
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(grace > budget, "grace {grace} s must exceed {budget} s");

    assert_eq!(iotgate["securityContext"]["readOnlyRootFilesystem"], true);
    let journal = cfg["directory"]["journal"].as_str().unwrap();
    assert!(
        writable
            .iter()
            .any(|w| Path::new(journal).parent() == Some(Path::new(w))),
        "the journal {journal} is on a writable mount ({writable:?})"
    );
    assert!(iotgate["resources"]["requests"]["memory"].is_string());
    (template["metadata"]["labels"].clone(), server)
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| &labels[k] == v)
}

/// The Service in front of the pod reaches iotgate's port, never the platform's.
fn check_services(objects: &[Value], labels: &Value) {
    let services: Vec<_> = of_kind(objects, "Service")
        .filter(|s| selects(&s["spec"]["selector"], labels))
        .collect();
    assert_eq!(services.len(), 1);
    for p in services[0]["spec"]["ports"].as_array().unwrap() {
        assert_eq!(p["targetPort"], "http", "{p}");
    }
}

/// The ports NetworkPolicies selecting `labels` admit, each with the rule's `from` (null:
/// from anywhere). Such a policy must fence ingress, or it fences nothing.
fn open_ports(objects: &[Value], labels: &Value) -> Vec<(u64, Value)> {
    of_kind(objects, "NetworkPolicy")
        .filter(|n| selects(&n["spec"]["podSelector"]["matchLabels"], labels))
        .inspect(|n| {
            let types = n["spec"]["policyTypes"].as_array().unwrap();
            assert!(types.contains(&"Ingress".into()), "{n}");
        })
        .flat_map(|n| n["spec"]["ingress"].as_array().unwrap().clone())
        .flat_map(|rule| {
            let from = rule["from"].clone();
            rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| (p["port"].as_u64().unwrap(), from.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_kubernetes_gateway_mounts_serves_and_fences_what_its_config_names() {
    let mut objects = config_maps();
    objects.push(secret());
    objects.extend(documents("deploy/kubernetes/gateway.yaml"));
    let deployment = named(&objects, "Deployment", "iotgate");
    let (labels, server) = check_pod(deployment, &objects);
    check_services(&objects, &labels);

    let upstream: hyper::Uri = server["upstream"].as_str().unwrap().parse().unwrap();
    let platform = serde_json::json!({"app.kubernetes.io/name": upstream.host().unwrap()});
    let fence = open_ports(&objects, &platform);
    assert!(
        !fence.is_empty(),
        "a NetworkPolicy guards the platform's pods"
    );
    for (port, from) in fence {
        assert_eq!(u64::from(upstream.port_u16().unwrap()), port);
        let from = from.as_array().unwrap();
        assert!(
            from.len() == 1
                && from[0]["namespaceSelector"].is_null()
                && selects(&from[0]["podSelector"]["matchLabels"], &labels),
            "only iotgate's pods of this namespace reach the platform: {from:?}"
        );
    }
    check_admin_fenced(&objects, &labels, &server);
}

/// The gateway port is open; the admin port only to the monitoring namespace.
fn check_admin_fenced(objects: &[Value], labels: &Value, server: &toml::Table) {
    let open = open_ports(objects, labels);
    assert!(open
        .iter()
        .any(|(p, from)| *p == toml_port(server, "listen") && from.is_null()));
    let admin = toml_port(server, "admin_listen");
    for (port, from) in open.iter().filter(|(p, _)| *p == admin) {
        let from = from
            .as_array()
            .unwrap_or_else(|| panic!("admin port {port} open to all"));
        assert!(
            from.iter().all(|f| f["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"]
                == "monitoring"
                && f["podSelector"].is_null()),
            "the admin port is for the monitoring namespace only: {from:?}"
        );
    }
}

#[test]
fn the_kubernetes_sidecar_reaches_the_platform_only_over_the_pods_loopback() {
    let mut objects = config_maps();
    objects.push(secret());
    objects.extend(documents("deploy/kubernetes/sidecar.yaml"));
    let deployment = named(&objects, "Deployment", "platform");
    let (labels, server) = check_pod(deployment, &objects);
    check_services(&objects, &labels);

    let pod = &deployment["spec"]["template"]["spec"];
    let upstream: hyper::Uri = server["upstream"].as_str().unwrap().parse().unwrap();
    let alias = &pod["hostAliases"][0];
    assert_eq!(alias["ip"], "127.0.0.1");
    assert_eq!(alias["hostnames"][0], upstream.host().unwrap());
    let platform_port = u64::from(upstream.port_u16().unwrap());
    assert_eq!(
        container_ports(container(pod, "platform"))["platform"],
        platform_port
    );
    check_admin_fenced(&objects, &labels, &server);
    let open = open_ports(&objects, &labels);
    assert!(
        open.iter().all(|(p, _)| *p != platform_port),
        "the platform's port is closed to everything outside the pod: {open:?}"
    );
}

/// The image's config at `/etc/iotgate/<profile>/iotgate.toml` (scripts/build-static.sh
/// copies deploy/container/<profile>.toml there).
fn image_config(path: &str) -> toml::Table {
    let profile = path
        .strip_prefix("/etc/iotgate/")
        .and_then(|p| p.strip_suffix("/iotgate.toml"))
        .unwrap_or_else(|| panic!("{path} is not a config the image ships"));
    let file = root().join(format!("deploy/container/{profile}.toml"));
    config(&std::fs::read_to_string(file).unwrap())
}

#[test]
fn the_compose_file_wires_the_image_config_to_the_mock_platform() {
    let compose = documents("examples/compose/compose.yaml").remove(0);
    let services = &compose["services"];
    let iotgate = &services["iotgate"];
    let cfg = image_config(&config_arg(&iotgate["command"]));
    let server = cfg["server"].as_table().unwrap();
    assert!(root()
        .join("examples/compose")
        .join(iotgate["build"]["context"].as_str().unwrap())
        .join(iotgate["build"]["dockerfile"].as_str().unwrap())
        .is_file());

    let secret = &iotgate["secrets"][0];
    assert_eq!(
        secret["target"].as_str(),
        cfg["auth"]["hs256_secret_file"].as_str()
    );
    let file = compose["secrets"][secret["source"].as_str().unwrap()]["file"]
        .as_str()
        .unwrap();
    assert!(root().join("examples/compose").join(file).is_file());

    let published: Vec<&str> = iotgate["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let listen = toml_port(server, "listen");
    let admin = toml_port(server, "admin_listen");
    assert!(published.contains(&format!("127.0.0.1:{listen}:{listen}").as_str()));
    assert!(
        published.contains(&format!("127.0.0.1:{admin}:{admin}").as_str()),
        "the admin port is published on the host's loopback only: {published:?}"
    );

    let upstream: hyper::Uri = server["upstream"].as_str().unwrap().parse().unwrap();
    let platform = &services[upstream.host().unwrap()];
    let mock = platform["command"].as_array().unwrap();
    assert_eq!(mock[..2], ["mock", "thinger"]);
    assert_eq!(
        port(&mock[3]),
        u64::from(upstream.port_u16().unwrap()),
        "the mock listens where the upstream points"
    );
    assert!(platform["ports"].is_null(), "the platform is not published");

    let journal = Path::new(cfg["directory"]["journal"].as_str().unwrap());
    let volume = iotgate["volumes"][0].as_str().unwrap();
    assert_eq!(
        Some(Path::new(volume.split_once(':').unwrap().1)),
        journal.parent()
    );
}

/// `Key=value` lines of a unit file (a key may repeat).
fn unit(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_systemd_unit_runs_the_image_config_hardened_and_verifies_clean() {
    let rel = "deploy/systemd/iotgate.service";
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    let settings = unit(&text);
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let exec: Vec<&str> = get("ExecStart")[0].split(' ').collect();
    assert_eq!(
        exec[..3],
        ["/usr/local/bin/iotgate", "--log-format", "json"]
    );
    let cfg = image_config(&config_arg(&serde_json::json!(exec[3..])));

    let secret = Path::new(cfg["auth"]["hs256_secret_file"].as_str().unwrap());
    let (name, _) = get("LoadCredential")[0].split_once(':').unwrap();
    assert_eq!(secret.file_name().unwrap(), name);
    assert_eq!(
        get("BindReadOnlyPaths"),
        [format!("%d:{}", secret.parent().unwrap().display())],
        "the credentials folder is bound where the config reads the secret"
    );
    let journal = PathBuf::from(cfg["directory"]["journal"].as_str().unwrap());
    assert_eq!(
        journal.parent().unwrap(),
        Path::new("/var/lib").join(get("StateDirectory")[0])
    );
    let stop = seconds(cfg["server"].as_table().unwrap(), "shutdown_delay_seconds")
        + seconds(cfg["server"].as_table().unwrap(), "drain_seconds");
    assert!(get("TimeoutStopSec")[0].parse::<i64>().unwrap() > stop);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("DynamicUser", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(get(key), [value], "{key}");
    }

    // systemd's own reading of the unit, with the binary it names replaced by this build's
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("iotgate.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/iotgate", env!("CARGO_BIN_EXE_iotgate")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
}
