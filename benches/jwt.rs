//! Token verification per algorithm (signature, time claims, principal), against the test
//! keys of `tests/fixtures/keys`, and the verified-token cache hit that `serve` uses after
//! the first request of a token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks fail loudly"
)]

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use iotgate::Config;
use iotgate::{now, Signer, Verifier};
use jsonwebtoken::Algorithm;

fn keys() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

fn verifier(alg: &str, key_line: &str) -> Verifier {
    let text = format!("[auth]\nalgorithms = [\"{alg}\"]\n{key_line}\nprincipal_claim = \"usr\"\n[policy]\nschema = \"s\"\nroutes = \"r\"\npolicies = []\n");
    Verifier::from_config(&Config::parse(&keys().join("bench.toml"), &text).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let claims = serde_json::json!({"usr": "bob", "exp": now() + 3600})
        .as_object()
        .unwrap()
        .clone();
    let secret = std::fs::read_to_string(keys().join("hs.secret")).unwrap();
    let cases: Vec<(&str, Verifier, Signer)> = vec![
        (
            "HS256",
            verifier("HS256", "hs256_secret_file = \"hs.secret\""),
            Signer::hmac(Algorithm::HS256, secret.trim().as_bytes()),
        ),
        (
            "RS256",
            verifier("RS256", "public_key_pem = \"rsa.pub.pem\""),
            Signer::private_pem(
                Algorithm::RS256,
                &std::fs::read(keys().join("rsa.key")).unwrap(),
                None,
            )
            .unwrap(),
        ),
        (
            "PS256",
            verifier("PS256", "public_key_pem = \"rsa.pub.pem\""),
            Signer::private_pem(
                Algorithm::PS256,
                &std::fs::read(keys().join("rsa.key")).unwrap(),
                None,
            )
            .unwrap(),
        ),
        (
            "ES256",
            verifier("ES256", "public_key_pem = \"ec256.pub.pem\""),
            Signer::private_pem(
                Algorithm::ES256,
                &std::fs::read(keys().join("ec256.key")).unwrap(),
                None,
            )
            .unwrap(),
        ),
        (
            "ES384",
            verifier("ES384", "public_key_pem = \"ec384.pub.pem\""),
            Signer::private_pem(
                Algorithm::ES384,
                &std::fs::read(keys().join("ec384.key")).unwrap(),
                None,
            )
            .unwrap(),
        ),
        (
            "EdDSA",
            verifier("EdDSA", "public_key_pem = \"ed25519.pub.pem\""),
            Signer::private_pem(
                Algorithm::EdDSA,
                &std::fs::read(keys().join("ed25519.key")).unwrap(),
                None,
            )
            .unwrap(),
        ),
    ];
    let mut group = c.benchmark_group("jwt_verify");
    for (name, verifier, signer) in &cases {
        let token = signer.sign(&claims).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().principal, "bob");
        group.bench_function(*name, |b| b.iter(|| verifier.verify(&token).unwrap()));
    }
    group.finish();
    let cache = iotgate::TokenCache::new(&iotgate::CacheConfig {
        max_entries: 1000,
        ttl: std::time::Duration::from_secs(60),
        max_bytes: 1 << 20,
        max_entry_bytes: 16 << 10,
    });
    let token = cases[1].2.sign(&claims).unwrap();
    cache.insert(
        &token,
        std::sync::Arc::new(cases[1].1.verify(&token).unwrap()),
        Some(now() + 3600),
        0,
    );
    c.bench_function("jwt_verify/cache_hit", |b| {
        b.iter(|| cache.get(&token, 0).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
