use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).unwrap()
}

/// A config verifying with `key_line` for `algs`, plus any extra `[auth]` lines.
fn verifier(algs: &str, key_line: &str, extra: &str) -> Verifier {
    let text = format!(
        "[auth]\nalgorithms = {algs}\n{key_line}\nprincipal_claim = \"usr\"\n{extra}\n\
         [policy]\nschema = \"s\"\nroutes = \"r\"\npolicies = []\n"
    );
    let config = Config::parse(&keys_dir().join("gateway.toml"), &text).unwrap();
    Verifier::from_config(&config).unwrap()
}

fn secret_verifier(extra: &str) -> Verifier {
    verifier(
        r#"["HS256", "HS384", "HS512"]"#,
        "hs256_secret_file = \"hs.secret\"",
        extra,
    )
}

fn claims(v: Value) -> Claims {
    v.as_object().unwrap().clone()
}

fn good_claims() -> Claims {
    claims(json!({"usr": "alice", "exp": now() + 600}))
}

fn secret_signer(alg: Algorithm) -> Signer {
    let secret = String::from_utf8(key_file("hs.secret")).unwrap();
    Signer::hmac(alg, secret.trim().as_bytes())
}

#[test]
fn hmac_family_verifies_with_the_trimmed_secret() {
    let v = secret_verifier("");
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = secret_signer(alg).sign(&good_claims()).unwrap();
        let id = v.verify(&token).unwrap();
        assert_eq!(id.principal, "alice", "{alg:?}");
        assert_eq!(id.claims["usr"], "alice");
    }
}

#[test]
fn each_public_key_family_verifies_from_a_pem() {
    let cases = [
        (Algorithm::RS256, "rsa.key", "rsa.pub.pem"),
        (Algorithm::RS384, "rsa.key", "rsa.pub.pem"),
        (Algorithm::RS512, "rsa.key", "rsa.pub.pem"),
        (Algorithm::PS256, "rsa.key", "rsa.pub.pem"),
        (Algorithm::ES256, "ec256.key", "ec256.pub.pem"),
        (Algorithm::ES384, "ec384.key", "ec384.pub.pem"),
        (Algorithm::EdDSA, "ed25519.key", "ed25519.pub.pem"),
    ];
    for (alg, private, public) in cases {
        let v = verifier(
            &format!("[\"{alg:?}\"]"),
            &format!("public_key_pem = \"{public}\""),
            "",
        );
        let token = Signer::private_pem(alg, &key_file(private), None)
            .unwrap()
            .sign(&good_claims())
            .unwrap();
        assert_eq!(v.verify(&token).unwrap().principal, "alice", "{alg:?}");
        // the same claims signed by another key of the family must fail
        if alg.family() == jsonwebtoken::AlgorithmFamily::Rsa {
            let other = Signer::private_pem(alg, &key_file("rsa2.key"), None)
                .unwrap()
                .sign(&good_claims())
                .unwrap();
            assert_eq!(v.verify(&other), Err(AuthError::Signature), "{alg:?}");
        }
    }
}

#[test]
fn inline_pem_is_accepted() {
    let pem = String::from_utf8(key_file("ec256.pub.pem")).unwrap();
    let v = verifier(
        r#"["ES256"]"#,
        &format!("public_key_pem = \"\"\"{pem}\"\"\""),
        "",
    );
    let token = Signer::private_pem(Algorithm::ES256, &key_file("ec256.key"), None)
        .unwrap()
        .sign(&good_claims())
        .unwrap();
    assert!(v.verify(&token).is_ok());
}

#[test]
fn hmac_token_signed_with_the_public_key_is_rejected() {
    // the classic algorithm-confusion attack: HS256 keyed with the RSA public key bytes
    let v = verifier(r#"["RS256"]"#, "public_key_pem = \"rsa.pub.pem\"", "");
    let forged = Signer::hmac(Algorithm::HS256, &key_file("rsa.pub.pem"))
        .sign(&good_claims())
        .unwrap();
    assert_eq!(v.verify(&forged), Err(AuthError::Algorithm("HS256".into())));
}

#[test]
fn alg_none_and_garbage_are_malformed() {
    let v = secret_verifier("");
    let b64 = |s: &str| {
        use base64_url::encode;
        encode(s)
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"usr":"alice"}"#)
    );
    assert!(matches!(v.verify(&none), Err(AuthError::Malformed(_))));
    for junk in ["", "abc", "a.b.c", "....", "\u{0}"] {
        assert!(
            matches!(v.verify(junk), Err(AuthError::Malformed(_))),
            "{junk:?}"
        );
    }
}

/// Minimal base64url (no padding) so the test can forge headers by hand.
mod base64_url {
    pub(super) fn encode(s: &str) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn time_claims_respect_the_leeway() {
    let v = secret_verifier("leeway_seconds = 30");
    let sign = |c: Value| secret_signer(Algorithm::HS256).sign(&claims(c)).unwrap();
    let t = now();
    assert!(v.verify(&sign(json!({"usr": "a", "exp": t - 10}))).is_ok());
    assert_eq!(
        v.verify(&sign(json!({"usr": "a", "exp": t - 120}))),
        Err(AuthError::Expired)
    );
    assert!(v
        .verify(&sign(json!({"usr": "a", "exp": t + 60, "nbf": t + 10})))
        .is_ok());
    assert_eq!(
        v.verify(&sign(json!({"usr": "a", "exp": t + 600, "nbf": t + 300}))),
        Err(AuthError::NotYetValid)
    );
    assert_eq!(
        v.verify(&sign(json!({"usr": "a"}))),
        Err(AuthError::Claim("exp".into()))
    );
    let lax = secret_verifier("require_exp = false");
    assert!(lax.verify(&sign(json!({"usr": "a"}))).is_ok());
}

#[test]
fn time_claims_are_numbers_read_to_the_second() {
    let v = secret_verifier("leeway_seconds = 0");
    let sign = |c: Value| secret_signer(Algorithm::HS256).sign(&claims(c)).unwrap();
    let t = now() as f64;
    // a fractional exp counts from its whole second: valid before it, expired after
    assert!(v
        .verify(&sign(json!({"usr": "a", "exp": t + 60.9})))
        .is_ok());
    assert_eq!(
        v.verify(&sign(json!({"usr": "a", "exp": t - 1.5}))),
        Err(AuthError::Expired)
    );
    assert_eq!(
        v.verify(&sign(json!({"usr": "a", "exp": t + 60.0, "nbf": t + 30.5}))),
        Err(AuthError::NotYetValid)
    );
    let verified = v
        .verify(&sign(json!({"usr": "a", "exp": t + 60.9})))
        .unwrap();
    assert_eq!(expiry(&verified.claims), Some(now() + 60));
    for (bad, claim) in [
        (json!({"usr": "a", "exp": "2099-01-01"}), "exp"),
        (json!({"usr": "a", "exp": t + 60.0, "nbf": true}), "nbf"),
        (json!({"usr": "a", "exp": t + 60.0, "iat": -5}), "iat"),
        (json!({"usr": "a", "exp": null}), "exp"),
        (json!({"usr": "a", "exp": t + 60.0, "dev": null}), "dev"),
    ] {
        assert_eq!(
            v.verify(&sign(bad.clone())),
            Err(AuthError::Claim(claim.into())),
            "{bad}"
        );
    }
}

#[test]
fn repeated_claims_are_refused() {
    use base64::Engine;
    let v = secret_verifier("");
    let b64 = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
    let secret = String::from_utf8(key_file("hs.secret")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes());
    let signed = |claims: &str| {
        let message = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    };
    let exp = now() + 60;
    let fine = signed(&format!(r#"{{"usr":"bob","exp":{exp}}}"#));
    assert_eq!(v.verify(&fine).unwrap().principal, "bob");
    let twice = signed(&format!(r#"{{"usr":"bob","usr":"olivia","exp":{exp}}}"#));
    assert!(
        matches!(v.verify(&twice), Err(AuthError::Malformed(m)) if m.contains("duplicate key `usr`"))
    );
}

#[test]
fn critical_header_extensions_are_refused() {
    let v = secret_verifier("");
    let secret = key_file("hs.secret");
    let key = jsonwebtoken::EncodingKey::from_secret(
        String::from_utf8(secret).unwrap().trim().as_bytes(),
    );
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.crit = Some(vec!["b64".into()]);
    let token = jsonwebtoken::encode(&header, &good_claims(), &key).unwrap();
    assert_eq!(v.verify(&token), Err(AuthError::Critical));
    header.crit = Some(vec![]);
    let token = jsonwebtoken::encode(&header, &good_claims(), &key).unwrap();
    assert_eq!(v.verify(&token), Err(AuthError::Critical));
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let v = secret_verifier("issuer = \"https://idp\"\naudience = \"iotgate\"");
    let sign = |c: Value| secret_signer(Algorithm::HS256).sign(&claims(c)).unwrap();
    let exp = now() + 600;
    let ok = json!({"usr": "a", "exp": exp, "iss": "https://idp", "aud": "iotgate"});
    assert!(v.verify(&sign(ok)).is_ok());
    let bad_iss = json!({"usr": "a", "exp": exp, "iss": "https://evil", "aud": "iotgate"});
    assert_eq!(v.verify(&sign(bad_iss)), Err(AuthError::Issuer));
    let bad_aud = json!({"usr": "a", "exp": exp, "iss": "https://idp", "aud": "other"});
    assert_eq!(v.verify(&sign(bad_aud)), Err(AuthError::Audience));
    let no_aud = json!({"usr": "a", "exp": exp, "iss": "https://idp"});
    assert_eq!(v.verify(&sign(no_aud)), Err(AuthError::Claim("aud".into())));
    // without a configured audience, a token's aud is not a reason to refuse it
    let open = secret_verifier("");
    assert!(open
        .verify(&sign(json!({"usr": "a", "exp": exp, "aud": "x"})))
        .is_ok());
}

#[test]
fn principal_claim_must_be_a_non_empty_string() {
    let v = secret_verifier("");
    let sign = |c: Value| secret_signer(Algorithm::HS256).sign(&claims(c)).unwrap();
    let exp = now() + 600;
    for bad in [
        json!({"exp": exp}),
        json!({"exp": exp, "usr": ""}),
        json!({"exp": exp, "usr": 7}),
    ] {
        assert_eq!(v.verify(&sign(bad)), Err(AuthError::Claim("usr".into())));
    }
}

#[test]
fn jwks_picks_by_kid_or_tries_the_family() {
    let v = verifier(
        r#"["RS256", "ES256", "ES384", "EdDSA"]"#,
        "jwks_file = \"jwks.json\"",
        "",
    );
    let sign = |alg, key: &str, kid: Option<&str>| {
        Signer::private_pem(alg, &key_file(key), kid.map(String::from))
            .unwrap()
            .sign(&good_claims())
            .unwrap()
    };
    assert!(v
        .verify(&sign(Algorithm::RS256, "rsa.key", Some("rsa-1")))
        .is_ok());
    assert!(v
        .verify(&sign(Algorithm::ES256, "ec256.key", Some("ec-256")))
        .is_ok());
    assert!(v
        .verify(&sign(Algorithm::ES384, "ec384.key", Some("ec-384")))
        .is_ok());
    assert!(v
        .verify(&sign(Algorithm::EdDSA, "ed25519.key", Some("ed-1")))
        .is_ok());
    // no kid: rsa-1 fails the signature, rsa-2 (no alg pinned) verifies
    assert!(v.verify(&sign(Algorithm::RS256, "rsa2.key", None)).is_ok());
    // a kid that names the wrong key fails; an unknown kid has no key
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, "rsa2.key", Some("rsa-1"))),
        Err(AuthError::Signature)
    );
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, "rsa.key", Some("nope"))),
        Err(AuthError::NoKey)
    );
    // the JWK pins ES256 for ec-256: an ES384 token naming it finds no key
    assert_eq!(
        v.verify(&sign(Algorithm::ES384, "ec384.key", Some("ec-256"))),
        Err(AuthError::NoKey)
    );
    // not in the allow-list
    assert_eq!(
        v.verify(&sign(Algorithm::PS256, "rsa.key", Some("rsa-2"))),
        Err(AuthError::Algorithm("PS256".into()))
    );
}

#[test]
fn bad_key_material_is_a_load_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.secret"), "\n").unwrap();
    std::fs::write(
        dir.path().join("bad.pem"),
        "-----BEGIN PUBLIC KEY-----\nxx\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.json"), "{\"keys\": [\n{\"kty\": ]}").unwrap();
    std::fs::write(dir.path().join("odd.json"), "{\"keys\": [{\"kty\": 1}]}").unwrap();
    let load = |algs: &str, key: &str| {
        let text = format!(
            "[auth]\nalgorithms = {algs}\n{key}\n[policy]\nschema = \"s\"\nroutes = \"r\"\npolicies = []\n"
        );
        let config = Config::parse(&dir.path().join("c.toml"), &text).unwrap();
        Verifier::from_config(&config).unwrap_err().to_string()
    };
    assert!(
        load(r#"["HS256"]"#, "hs256_secret_file = \"empty.secret\"").contains("secret is empty")
    );
    assert!(load(r#"["HS256"]"#, "hs256_secret_file = \"missing\"").contains("cannot read"));
    assert!(load(r#"["RS256"]"#, "public_key_pem = \"bad.pem\"").contains("not a Rsa public key"));
    assert!(load(r#"["RS256"]"#, "jwks_file = \"bad.json\"").contains("bad.json:2: not a JWKS"));
    assert!(
        load(r#"["RS256"]"#, "jwks_file = \"odd.json\"").contains("odd.json: key `#0`: unusable")
    );
}

#[test]
fn a_token_parameter_counts_in_every_spelling() {
    let v = secret_verifier("query_parameter = \"authorization\"");
    let none = http::HeaderMap::new();
    let mut bearer = http::HeaderMap::new();
    bearer.insert(http::header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
    let q = |raw: &'static str| Query::new(Some(raw));
    assert_eq!(v.token(&none, q("Authorization=x.y.z")).unwrap(), "x.y.z");
    assert_eq!(
        v.token(&bearer, q("AUTHORIZATION=x.y.z")),
        Err(AuthError::Ambiguous)
    );
    assert_eq!(
        v.token(&none, q("authorization=1&Authorization=2")),
        Err(AuthError::Ambiguous)
    );
    assert_eq!(v.token(&bearer, q("authorizations=1")).unwrap(), "a.b.c");
}

#[test]
fn token_comes_from_one_place_only() {
    let v = secret_verifier("query_parameter = \"authorization\"");
    let mut h = http::HeaderMap::new();
    let q = |s| Query::new(Some(s));
    assert_eq!(v.token(&h, q("")), Err(AuthError::Missing));
    assert_eq!(v.token(&h, q("authorization=abc")).unwrap(), "abc");
    h.insert("authorization", "Bearer xyz".parse().unwrap());
    assert_eq!(v.token(&h, q("")).unwrap(), "xyz");
    assert_eq!(
        v.token(&h, q("authorization=abc")),
        Err(AuthError::Ambiguous)
    );
    h.append("authorization", "Bearer other".parse().unwrap());
    assert_eq!(v.token(&h, q("")), Err(AuthError::Ambiguous));
    h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(v.token(&h, q("")), Err(AuthError::NotBearer));
    let h = http::HeaderMap::new();
    assert_eq!(
        v.token(&h, q("authorization=a&authorization=b")),
        Err(AuthError::Ambiguous)
    );
    // without a configured query parameter, the query is not a place for tokens
    let strict = secret_verifier("");
    assert_eq!(
        strict.token(&h, q("authorization=abc")),
        Err(AuthError::Missing)
    );
}
