//! Authentication: from a request's credentials to a verified [`Identity`].
//!
//! ```text
//! Authorization: Bearer <jwt>  ─┐
//! ?<query_parameter>=<jwt>      ─┴─ token() ─▶ Verifier::verify
//!     strict header and claims ─▶ issuer by `iss` (else the one without `issuer`)
//!     ─▶ alg in its allow-list? ─▶ candidate keys of its KeySet (by kid, else by family;
//!        an unknown kid wakes its JWKS URL fetcher) ─▶ signature, exp / nbf (leeway),
//!     iss, aud ─▶ its principal claim ─▶ Identity
//! ```
//!
//! Keys come from the `[auth]` config (one issuer, or several `[[auth.issuer]]`); key files
//! are read again by [`Verifier::reload_keys`] (reload), JWKS URLs by `jwks::Remote`. Every
//! key change bumps [`Verifier::generation`], which the token cache compares. Every failure
//! is an [`AuthError`], which the gateway answers with 401.

pub(crate) mod fetch;
pub(crate) mod jwks;
pub(crate) mod keys;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jsonwebtoken::{errors::ErrorKind, Algorithm, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use self::jwks::Remote;
use self::keys::{Key, KeySet};
use crate::config::problem::{read_text, Problems};
use crate::config::{Config, IssuerConfig, KeySource};
use crate::request::uri::Query;

/// The claims of a verified token.
pub(crate) type Claims = Map<String, Value>;

/// Who a request is from: the principal id and the claims that named it.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Value of the configured principal claim.
    pub principal: String,
    /// Every claim of the token (context mappings may read them).
    pub claims: Claims,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the header or the query.
    #[error("no token")]
    Missing,
    /// The token was given more than once (two headers, header and query, repeated query).
    #[error("token given more than once")]
    Ambiguous,
    /// An `Authorization` header that is not `Bearer`.
    #[error("authorization scheme is not bearer")]
    NotBearer,
    /// Not a JWT, or claims that are not a JSON object.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header's algorithm is not in the allow-list.
    #[error("algorithm `{0}` is not allowed")]
    Algorithm(String),
    /// No configured key can check this token (unknown `kid`).
    #[error("no key for this token")]
    NoKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` differs from the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` differs from the configured audience.
    #[error("wrong audience")]
    Audience,
    /// A required claim (`exp`, the principal claim) is absent or not usable, a time claim
    /// is not a number, or a claim is `null`.
    #[error("missing or invalid claim `{0}`")]
    Claim(String),
    /// The header lists `crit` extensions; iotgate implements none (RFC 7515 §4.1.11).
    #[error("critical header extension not understood")]
    Critical,
}

/// One issuer's keys and rules.
#[derive(Clone)]
struct Issuer {
    /// The `iss` it answers for (`None`: tokens without one, or one no issuer claims).
    name: Option<String>,
    validations: HashMap<Algorithm, Validation>,
    algorithms: Vec<Algorithm>,
    source: KeySource,
    /// Where its config is (`auth`, `auth.issuer.N`), for problems.
    at: String,
    keys: KeySet,
    /// A digest of the key file's text, to tell a rotation from a reload of the same keys.
    digest: Arc<AtomicU64>,
    remote: Option<Arc<Remote>>,
    principal_claim: String,
}

/// Verifies tokens against the configured keys and rules.
#[derive(Clone)]
pub struct Verifier {
    issuers: Vec<Issuer>,
    query_parameter: Option<String>,
    leeway: u64,
    require_exp: bool,
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.name).collect::<Vec<_>>(),
            )
            .field("query_parameter", &self.query_parameter)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the keys named by `[auth]` (a JWKS URL's set starts empty: see
    /// [`Verifier::remotes`]).
    ///
    /// # Errors
    /// A key file cannot be read or parsed, or a JWKS has no key usable with the allowed
    /// algorithms; problems point at the config line that names the key.
    pub fn from_config(config: &Config) -> Result<Verifier, Problems> {
        let auth = &config.auth;
        let generation = Arc::new(AtomicU64::new(0));
        let mut problems = Problems::new();
        let mut issuers = Vec::new();
        for (i, c) in auth.issuers.iter().enumerate() {
            let at = match auth.issuers.len() {
                1 => "auth".to_string(),
                _ => format!("auth.issuer.{i}"),
            };
            let Some((keys, digest)) =
                problems.take(keys::load(&c.key, &c.algorithms, config, &at))
            else {
                continue;
            };
            let set = KeySet::new(keys, generation.clone());
            let remote = match &c.key {
                KeySource::JwksUrl { url, refresh } => Some(Arc::new(Remote::new(
                    url.clone(),
                    *refresh,
                    c.algorithms.clone(),
                    set.clone(),
                ))),
                _ => None,
            };
            issuers.push(Issuer {
                name: c.issuer.clone(),
                validations: c
                    .algorithms
                    .iter()
                    .map(|alg| (*alg, validation(c, auth.leeway_seconds, *alg)))
                    .collect(),
                algorithms: c.algorithms.clone(),
                source: c.key.clone(),
                at,
                keys: set,
                digest: Arc::new(AtomicU64::new(digest)),
                remote,
                principal_claim: c.principal_claim.clone(),
            });
        }
        problems.into_result(Verifier {
            issuers,
            query_parameter: auth.query_parameter.clone(),
            leeway: auth.leeway_seconds,
            require_exp: auth.require_exp,
            generation,
        })
    }

    /// Reads the key files again and serves the keys of those that changed (a rotation:
    /// tokens signed with the old keys are refused from now on). All or nothing: with any
    /// problem, every issuer keeps its keys.
    ///
    /// # Errors
    /// A key file cannot be read or parsed.
    pub fn reload_keys(&self, config: &Config) -> Result<usize, Problems> {
        let mut problems = Problems::new();
        let mut fresh = Vec::new();
        for issuer in self.issuers.iter().filter(|i| i.remote.is_none()) {
            let loaded = keys::load(&issuer.source, &issuer.algorithms, config, &issuer.at);
            if let Some((keys, digest)) = problems.take(loaded) {
                if digest != issuer.digest.load(Ordering::Relaxed) {
                    fresh.push((issuer, keys, digest));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        for (issuer, keys, digest) in &mut fresh {
            issuer.keys.replace(std::mem::take(keys));
            issuer.digest.store(*digest, Ordering::Relaxed);
        }
        Ok(fresh.len())
    }

    /// The JWKS URLs whose keys the gateway must fetch and refresh.
    pub fn remotes(&self) -> Vec<Arc<Remote>> {
        self.issuers
            .iter()
            .filter_map(|i| i.remote.clone())
            .collect()
    }

    /// Counts key changes: a token verified under another generation is verified again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The query parameter that may carry the token.
    pub fn query_parameter(&self) -> Option<&str> {
        self.query_parameter.as_deref()
    }

    /// The claim that names the principal (of the first issuer, which `check --as` uses).
    pub fn principal_claim(&self) -> &str {
        self.issuers
            .first()
            .map_or("sub", |i| i.principal_claim.as_str())
    }

    /// Finds the request's token: `Authorization: Bearer` or the configured query parameter.
    ///
    /// # Errors
    /// No token, a non-bearer scheme, or a token given more than once.
    pub fn token<'a>(
        &self,
        headers: &'a http::HeaderMap,
        query: Query<'_>,
    ) -> Result<std::borrow::Cow<'a, str>, AuthError> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let header = match (values.next(), values.next()) {
            (_, Some(_)) => return Err(AuthError::Ambiguous),
            (Some(v), None) => Some(bearer(v)?),
            (None, None) => None,
        };
        let from_query = match &self.query_parameter {
            Some(name) => query.get_any_case(name).map_err(|_| AuthError::Ambiguous)?,
            None => None,
        };
        match (header, from_query) {
            (Some(_), Some(_)) => Err(AuthError::Ambiguous),
            (Some(t), None) => Ok(std::borrow::Cow::Borrowed(t)),
            (None, Some(t)) => Ok(std::borrow::Cow::Owned(t)),
            (None, None) => Err(AuthError::Missing),
        }
    }

    /// Verifies a token and extracts the principal.
    ///
    /// # Errors
    /// Any [`AuthError`] but the extraction ones.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let iss = check_segments(token)?;
        let issuer = self.issuer_of(iss.as_deref())?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let validation = issuer
            .validations
            .get(&header.alg)
            .ok_or_else(|| AuthError::Algorithm(format!("{:?}", header.alg)))?;
        let keys = issuer.keys.current();
        let mut candidates = candidates(&keys, header.alg, header.kid.as_deref()).peekable();
        if candidates.peek().is_none() {
            if let Some(remote) = &issuer.remote {
                remote.wake();
            }
            return Err(AuthError::NoKey);
        }
        let mut last = AuthError::NoKey;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => {
                    self.check_claims(&data.claims)?;
                    return identity(&issuer.principal_claim, data.claims);
                }
                Err(e) => last = map_error(e.kind()),
            }
            if last != AuthError::Signature {
                break;
            }
        }
        Err(last)
    }

    /// The issuer a token's `iss` names, else the one without `issuer`.
    fn issuer_of(&self, iss: Option<&str>) -> Result<&Issuer, AuthError> {
        let named =
            iss.and_then(|iss| self.issuers.iter().find(|i| i.name.as_deref() == Some(iss)));
        named
            .or_else(|| self.issuers.iter().find(|i| i.name.is_none()))
            .ok_or(AuthError::Issuer)
    }

    /// Checks what a signed token's claims say about time, reading `exp`, `nbf` and `iat` as
    /// numbers rounded down (a fractional `exp` counts from its whole second) and refusing
    /// any other type, and refuses `null` claims (a present `null` is not an absent claim).
    fn check_claims(&self, claims: &Claims) -> Result<(), AuthError> {
        if let Some((name, _)) = claims.iter().find(|(_, v)| v.is_null()) {
            return Err(AuthError::Claim(name.clone()));
        }
        let now = now();
        match time_claim(claims, "exp")? {
            Some(exp) if exp.saturating_add(self.leeway) < now => return Err(AuthError::Expired),
            None if self.require_exp => return Err(AuthError::Claim("exp".into())),
            _ => {}
        }
        if time_claim(claims, "nbf")?.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AuthError::NotYetValid);
        }
        time_claim(claims, "iat")?;
        Ok(())
    }

    /// Builds an identity from claims that are trusted without a signature (`check --as`).
    ///
    /// # Errors
    /// The principal claim is missing or not a non-empty string.
    pub fn identity(&self, claims: Claims) -> Result<Identity, AuthError> {
        identity(self.principal_claim(), claims)
    }
}

fn identity(principal_claim: &str, claims: Claims) -> Result<Identity, AuthError> {
    let principal = match claims.get(principal_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(AuthError::Claim(principal_claim.to_string())),
    };
    Ok(Identity { principal, claims })
}

/// Keys that may verify a token of `alg` with this `kid`: the `kid`'s key when given,
/// else every key of the algorithm's family.
fn candidates<'a>(
    keys: &'a [Key],
    alg: Algorithm,
    kid: Option<&'a str>,
) -> impl Iterator<Item = &'a Key> + 'a {
    keys.iter().filter(move |k| {
        let kid_ok = match (kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        };
        kid_ok && k.alg.is_none_or(|a| a == alg) && k.key.family() == alg.family()
    })
}

fn bearer(value: &http::HeaderValue) -> Result<&str, AuthError> {
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// Reads the token's header and claims strictly before the JWT library does: each must be
/// one JSON object with no repeated key (`{"usr":"bob","usr":"olivia"}` reads as either
/// account, depending on the parser), and the header must not have `crit` (iotgate
/// implements no extension; the library does not look at it). Returns the claims' `iss`
/// when it is a string, to choose the issuer by.
fn check_segments(token: &str) -> Result<Option<String>, AuthError> {
    use base64::Engine;
    let mut parts = token.split('.');
    let mut iss = None;
    for (part, is_header) in [(parts.next(), true), (parts.next(), false)] {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.unwrap_or_default())
            .map_err(|e| AuthError::Malformed(e.to_string()))?;
        let mut object = crate::request::json::object(&raw).map_err(AuthError::Malformed)?;
        if is_header && object.contains_key("crit") {
            return Err(AuthError::Critical);
        }
        if let (false, Some(Value::String(i))) = (is_header, object.remove("iss")) {
            iss = Some(i);
        }
    }
    Ok(iss)
}

/// A time claim in whole seconds since the epoch (rounded down), if present.
///
/// # Errors
/// The claim is not a non-negative number.
fn time_claim(claims: &Claims, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(whole), _) => Ok(Some(whole)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f.floor() as u64)),
            _ => Err(AuthError::Claim(name.to_string())),
        },
        Some(_) => Err(AuthError::Claim(name.to_string())),
    }
}

/// When a verified token expires (its `exp`, rounded down), for caches.
pub(crate) fn expiry(claims: &Claims) -> Option<u64> {
    time_claim(claims, "exp").ok().flatten()
}

/// Signature, algorithm, `iss` and `aud` are checked by the JWT library; the time claims
/// by [`Verifier::check_claims`], which reads them strictly.
fn validation(auth: &IssuerConfig, leeway: u64, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_nbf = false;
    v.validate_exp = false;
    let mut required = Vec::new();
    if let Some(iss) = &auth.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    match &auth.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Claim(c.clone())
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::Algorithm("mismatch".to_string())
        }
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

// === minting (the `token` command, demos and tests) ===

/// A key that signs tokens: the configured secret, or a private key PEM.
pub struct Signer {
    alg: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with an HMAC secret.
    pub fn hmac(alg: Algorithm, secret: &[u8]) -> Signer {
        Signer {
            alg,
            kid: None,
            key: EncodingKey::from_secret(secret),
        }
    }

    /// A signer with a private key PEM (PKCS#8) of `alg`'s family.
    ///
    /// # Errors
    /// The PEM is not a private key of that family.
    pub fn private_pem(alg: Algorithm, pem: &[u8], kid: Option<String>) -> Result<Signer, String> {
        use jsonwebtoken::AlgorithmFamily::*;
        let key = match alg.family() {
            Rsa => EncodingKey::from_rsa_pem(pem),
            Ec => EncodingKey::from_ec_pem(pem),
            Ed => EncodingKey::from_ed_pem(pem),
            Hmac => return Err("HMAC algorithms sign with a secret".into()),
        };
        Ok(Signer {
            alg,
            kid,
            key: key.map_err(|e| format!("not a private key for {alg:?}: {e}"))?,
        })
    }

    /// The signer for a config's own key, when it holds one (the HMAC secret).
    ///
    /// # Errors
    /// The config verifies with a public key, so it cannot sign; or the secret is unreadable.
    pub fn from_config(config: &Config) -> Result<Signer, String> {
        let hmac = config.auth.issuers.iter().find_map(|i| match &i.key {
            KeySource::Secret(path) => Some((path, i.algorithms.first().copied())),
            _ => None,
        });
        match hmac {
            Some((path, alg)) => {
                let secret = read_text(path).map_err(|p| p.to_string())?;
                Ok(Signer::hmac(
                    alg.unwrap_or(Algorithm::HS256),
                    secret.trim().as_bytes(),
                ))
            }
            None => Err("the config verifies with a public key; pass --private-key to sign".into()),
        }
    }

    /// Signs claims.
    ///
    /// # Errors
    /// Signing failed (a key that does not fit the algorithm).
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| e.to_string())
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests;
