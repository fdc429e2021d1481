//! Verification keys: loaded from a secret file, a PEM, a JWKS file or a JWKS URL, and
//! swapped whole when they rotate.
//!
//! ```text
//! KeySource ──load()──▶ Vec<Key> (a URL loads none: `jwks::Remote` fills it)
//! KeySet: the keys one issuer verifies with; `replace` swaps them atomically and bumps the
//!         verifier's generation, so tokens verified with old keys leave the token cache
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::problem::{read_text, Problem, Problems};
use crate::config::{Config, KeySource, PemSource};

/// A verification key and what it may verify.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    /// The algorithm a JWK pins with `alg`, if any.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

/// The keys of one issuer, replaced whole when they rotate.
#[derive(Clone)]
pub(crate) struct KeySet {
    keys: Arc<ArcSwap<Vec<Key>>>,
    /// The verifier's key generation, shared by all its sets.
    generation: Arc<AtomicU64>,
}

impl KeySet {
    pub(crate) fn new(keys: Vec<Key>, generation: Arc<AtomicU64>) -> KeySet {
        KeySet {
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            generation,
        }
    }

    /// The keys now.
    pub(crate) fn current(&self) -> Arc<Vec<Key>> {
        self.keys.load_full()
    }

    /// Serves `keys` from now on; tokens verified with the old ones are verified again.
    pub(crate) fn replace(&self, keys: Vec<Key>) {
        self.keys.store(Arc::new(keys));
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// Loads the keys a source names (none for a URL, which is fetched later), with a digest
/// of the text they were read from.
///
/// # Errors
/// A key file cannot be read or parsed, or holds no key usable with `algorithms`.
pub(crate) fn load(
    source: &KeySource,
    algorithms: &[Algorithm],
    config: &Config,
    at: &str,
) -> Result<(Vec<Key>, u64), Problems> {
    let text = match source {
        KeySource::Secret(path)
        | KeySource::Jwks(path)
        | KeySource::PublicPem(PemSource::File(path)) => read_text(path)?,
        KeySource::PublicPem(PemSource::Inline(text)) => text.clone(),
        KeySource::JwksUrl { .. } => String::new(),
    };
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    };
    Ok((parse(source, &text, algorithms, config, at)?, digest))
}

fn parse(
    source: &KeySource,
    text: &str,
    algorithms: &[Algorithm],
    config: &Config,
    at: &str,
) -> Result<Vec<Key>, Problems> {
    let single = |key: DecodingKey| {
        vec![Key {
            kid: None,
            alg: None,
            key,
        }]
    };
    match source {
        KeySource::Secret(path) => {
            let secret = text.trim();
            if secret.is_empty() {
                return Err(Problem::in_file(path, "secret is empty").into());
            }
            Ok(single(DecodingKey::from_secret(secret.as_bytes())))
        }
        KeySource::PublicPem(source) => {
            let origin = match source {
                PemSource::Inline(_) => config.problem(&format!("{at}.public_key_pem"), ""),
                PemSource::File(path) => Problem::in_file(path, ""),
            };
            let key = pem_key(text.as_bytes(), algorithms).map_err(|m| Problem {
                message: m,
                ..origin
            })?;
            Ok(single(key))
        }
        KeySource::Jwks(path) => jwks(text, path, algorithms),
        KeySource::JwksUrl { .. } => Ok(Vec::new()),
    }
}

/// Reads a public key PEM of the family of the allowed algorithms.
fn pem_key(pem: &[u8], algorithms: &[Algorithm]) -> Result<DecodingKey, String> {
    use jsonwebtoken::AlgorithmFamily::*;
    let family = algorithms
        .first()
        .map(|a| a.family())
        .ok_or("no algorithm")?;
    if algorithms.iter().any(|a| a.family() != family) {
        return Err(
            "a public key serves one algorithm family; the allowed algorithms mix families".into(),
        );
    }
    let key = match family {
        Rsa => DecodingKey::from_rsa_pem(pem),
        Ec => DecodingKey::from_ec_pem(pem),
        Ed => DecodingKey::from_ed_pem(pem),
        Hmac => return Err("HMAC algorithms need a secret".into()),
    };
    key.map_err(|e| format!("not a {family:?} public key PEM: {e}"))
}

/// Parses a JWKS document (`origin`: the file or URL it came from, for problems).
///
/// # Errors
/// Not a JWKS, an unusable key, or no key usable with `algorithms`.
pub(crate) fn jwks(
    text: &str,
    origin: &Path,
    algorithms: &[Algorithm],
) -> Result<Vec<Key>, Problems> {
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|e| Problem::at_line(origin, Some(e.line()), format!("not a JWKS: {e}")))?;
    let mut problems = Problems::new();
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        let alg = match jwk.common.key_algorithm.map(Algorithm::try_from) {
            Some(Ok(alg)) => Some(alg),
            Some(Err(_)) => {
                problems.push(Problem::in_file(
                    origin,
                    format!("key `{name}`: `alg` is not a signing algorithm"),
                ));
                continue;
            }
            None => None,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            }),
            Err(e) => problems.push(Problem::in_file(
                origin,
                format!("key `{name}`: unusable ({e})"),
            )),
        }
    }
    let usable = keys
        .iter()
        .any(|k| algorithms.iter().any(|a| a.family() == k.key.family()));
    if !usable && problems.is_empty() {
        problems.push(Problem::in_file(
            origin,
            "no key in this JWKS fits the allowed algorithms",
        ));
    }
    problems.into_result(keys)
}
