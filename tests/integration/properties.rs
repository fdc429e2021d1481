//! Properties of the readers on the decision path, over generated inputs (proptest): the
//! path reader, the query reader, the route matcher of the bundled `thinger` table and
//! token parsing never panic; a path the strict reader accepts is forwarded byte for
//! byte; the route a path was decided on is the route its forwarded path matches.

use std::path::{Path, PathBuf};

use iotgate::Query;
use iotgate::RouteTable;
use iotgate::Segment;
use proptest::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Names the Thinger API routes under `/users/{u}/devices/{d}/` in some version.
const DEVICE_SUB_PATHS: [&str; 10] = [
    "api",
    "buckets",
    "callback",
    "clone",
    "projects",
    "properties",
    "resources",
    "services",
    "stats",
    "tokens",
];

fn thinger_routes() -> &'static RouteTable {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let (catalog, _) =
            iotgate::Catalog::load(&root().join("schema/thinger.cedarschema")).unwrap();
        RouteTable::load(&root().join("schema/thinger.routes.toml"), &catalog)
            .unwrap()
            .0
    })
}

/// Path segments an attacker or a client would send: the route table's literals, names,
/// and the escapes and tricks the strict reader has to judge.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "v1", "v2", "v3", "users", "devices", "dave", "sensor1", "resources", "clone",
            "stats", "tokens", "projects", "api", "buckets", "plugins", "storages", "files",
            "events", "properties", "server", "settings", "proxies", "led", "callback",
            "services",
        ])
        .prop_map(String::from),
        2 => "[a-zA-Z0-9_$-]{1,12}",
        1 => prop::sample::select(vec![
            "", ".", "..", "..;", "%2e", "%2E%2e", "%2F", "%2f", "%252e", "%25", "%5C", "\\",
            ";x=1", "%3B", "%00", "%0A", "%7F", "%C3%A9", "%C3", "%FF", "%EF%BC%8E", "caf%C3%A9",
            "a%20b", "%zz", "%4",
        ])
        .prop_map(String::from),
        1 => "[ -~]{0,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..9).prop_map(|s| format!("/{}", s.join("/")))
}

fn upstream() -> iotgate::Upstream {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://10.0.0.1:8081\"\n\
                [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"s\"\n\
                [policy]\nschema = \"s\"\nroutes = \"r\"\npolicies = []\n";
    let config = iotgate::Config::parse(Path::new("/p/c.toml"), text).unwrap();
    iotgate::Upstream::new(&config.server.unwrap()).unwrap()
}

/// What the upstream is sent for a request to `target` that was allowed.
fn forwarded(upstream: &iotgate::Upstream, target: &str) -> String {
    let (parts, ()) = http::Request::get(target).body(()).unwrap().into_parts();
    let stamp = iotgate::Stamp {
        peer: "127.0.0.1:1".parse().unwrap(),
        trusted: false,
        secure: false,
        cookies: false,
        reads_no_token: false,
        request_id: "r",
        principal: Some("p"),
        policy_version: "v",
        directory_version: "d",
    };
    let body = iotgate::full(bytes::Bytes::new());
    let request = iotgate::rewrite(upstream, parts, body, stamp, false).unwrap();
    request.uri().path_and_query().unwrap().to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn readers_never_panic(raw in "\\PC{0,40}", query in "\\PC{0,40}") {
        let _ = iotgate::segments(&raw);
        let q = Query::new(Some(&query));
        let _ = q.get("authorization");
        let _ = q.get_any_case("authorization");
        let _ = iotgate::check_query(Some(&query), Some("authorization"));
    }

    #[test]
    fn accepted_paths_are_forwarded_byte_for_byte_and_keep_their_route(
        path in path(),
        query in prop::option::of("[a-z0-9=&%]{0,12}"),
    ) {
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        // what an HTTP server hands over: the parsed request target (no fragment)
        let Ok(uri) = target.parse::<http::Uri>() else {
            return Ok(());
        };
        let Ok(segments) = iotgate::segments(uri.path()) else {
            return Ok(());
        };
        let target = uri.path_and_query().map(ToString::to_string).unwrap_or_default();
        let sent = forwarded(&upstream(), &target);
        prop_assert_eq!(&sent, &target);
        // the forwarded target reads to the same segments, hence the same route
        let table = thinger_routes();
        let sent_path = sent.split('?').next().unwrap_or_default();
        let again = iotgate::segments(sent_path).unwrap();
        prop_assert_eq!(&again, &segments);
        for method in [http::Method::GET, http::Method::POST, http::Method::PUT, http::Method::DELETE] {
            let first = table.find(&method, &segments).map(|(r, c)| (r.name.clone(), c));
            let second = table.find(&method, &again).map(|(r, c)| (r.name.clone(), c));
            prop_assert_eq!(first, second);
        }
    }

    #[test]
    fn a_matched_route_is_the_path_it_was_decided_on(path in path()) {
        let Ok(segments) = iotgate::segments(&path) else {
            return Ok(());
        };
        let table = thinger_routes();
        for method in [http::Method::GET, http::Method::POST, http::Method::PUT, http::Method::DELETE] {
            let Some((route, captures)) = table.find(&method, &segments) else {
                continue;
            };
            // rebuild the decoded path from the template and the captures: it is the request's
            let mut rebuilt: Vec<String> = Vec::new();
            for s in &route.path.segments {
                match s {
                    Segment::Literal(l) => rebuilt.push(l.clone()),
                    Segment::Capture(n) | Segment::Rest(n) => {
                        let value = &captures.iter().find(|(name, _)| name == n).unwrap().1;
                        if !value.is_empty() {
                            rebuilt.extend(value.split('/').map(String::from));
                        }
                    }
                }
            }
            let decoded: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
            prop_assert_eq!(rebuilt, decoded, "{} {}", method, route.name);
            // a legacy resource capture never takes a name some version routes under a device
            if route.name.contains("(legacy)") {
                let resource = &captures.iter().find(|(n, _)| *n == "resource").unwrap().1;
                prop_assert!(!DEVICE_SUB_PATHS.contains(&resource.as_str()), "{} took {}", route.name, resource);
            }
        }
    }

    #[test]
    fn tokens_never_panic_and_never_verify_unsigned(token in "[A-Za-z0-9_.=-]{0,80}", header in "\\PC{0,60}") {
        let verifier = mini_verifier();
        prop_assert!(verifier.verify(&token).is_err());
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&header) {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let _ = verifier.token(&headers, Query::new(Some(&token)));
    }
}

fn mini_verifier() -> iotgate::Verifier {
    let secret = root().join("tests/fixtures/keys/hs.secret");
    let text = format!(
        "[auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{}\"\nquery_parameter = \"authorization\"\n\
         [policy]\nschema = \"s\"\nroutes = \"r\"\npolicies = []\n",
        secret.display()
    );
    let config = iotgate::Config::parse(Path::new("/p/c.toml"), &text).unwrap();
    iotgate::Verifier::from_config(&config).unwrap()
}
