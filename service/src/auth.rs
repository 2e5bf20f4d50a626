//! Bearer-token authentication (JWT via `jwt-simple`) and role-based access.
//!
//! One key is configured: an HS256 secret or an ES256/RS256 public key. The key fixes the
//! algorithm, so `alg: none` and HS/RS key confusion fail signature verification. `exp` is
//! required; `iss` and `aud` are checked when configured; clocks may differ by a small
//! leeway. Secrets are compared inside `jwt-simple` in constant time.

use std::collections::HashSet;

use http::StatusCode;
use jwt_simple::JWTError;
use jwt_simple::prelude::*;

use crate::config::ConfigError;
use crate::error::ApiError;

/// Longest `Authorization` token accepted.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// A role from the token's `role` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads models and results.
    Viewer,
    /// Also runs inference.
    Operator,
    /// Reads the audit log, nothing else.
    Auditor,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` allows.
    pub fn allows(self, needed: Access) -> bool {
        match needed {
            Access::Public => true,
            Access::Any => true,
            Access::Read => matches!(self, Role::Viewer | Role::Operator | Role::Admin),
            Access::Infer => matches!(self, Role::Operator | Role::Admin),
            Access::Audit => matches!(self, Role::Auditor | Role::Admin),
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (`/health`).
    Public,
    /// Any valid token with a known role (`/openapi.json`).
    Any,
    /// viewer, operator, admin.
    Read,
    /// operator, admin.
    Infer,
    /// auditor, admin.
    Audit,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub sub: String,
    /// The token's role; `None` when the claim is missing or unknown (then every protected
    /// route answers 403).
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct RoleClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

#[derive(Debug)]
enum Key {
    Hs256(HS256Key),
    Es256(ES256PublicKey),
    // Boxed: on wasm32 an RSA key is 3× the others, and the enum would be as large.
    Rs256(Box<RS256PublicKey>),
}

/// Verifies bearer tokens against the configured key and claims.
#[derive(Debug)]
pub struct Verifier {
    key: Key,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Malformed, badly signed, wrong issuer/audience, missing `exp`/`sub`.
    Invalid,
    /// `exp` has passed.
    Expired,
}

impl AuthFailure {
    /// The 401 answer, with its `WWW-Authenticate` value.
    pub fn to_error(self) -> (ApiError, String) {
        let (code, message, challenge) = match self {
            AuthFailure::Missing => (
                "auth.missing_token",
                "an Authorization: Bearer token is required",
                r#"Bearer realm="medinfer""#.to_string(),
            ),
            AuthFailure::Invalid => (
                "auth.invalid_token",
                "the bearer token is invalid",
                r#"Bearer realm="medinfer", error="invalid_token", error_description="the token is invalid""#.to_string(),
            ),
            AuthFailure::Expired => (
                "auth.token_expired",
                "the bearer token has expired",
                r#"Bearer realm="medinfer", error="invalid_token", error_description="the token has expired""#.to_string(),
            ),
        };
        (ApiError::new(StatusCode::UNAUTHORIZED, code, message), challenge)
    }
}

impl Verifier {
    /// Builds a verifier from configuration: exactly one of an HS256 secret (≥ 32 bytes) or
    /// a PEM public key (ES256 or RS256, detected from the key).
    pub fn from_config(
        hs256_secret: Option<&str>,
        public_key_pem: Option<&str>,
        issuer: Option<String>,
        audience: Option<String>,
        leeway_s: u64,
    ) -> Result<Verifier, ConfigError> {
        let key = match (hs256_secret, public_key_pem) {
            (Some(_), Some(_)) => {
                return Err(ConfigError("set jwt_hs256_secret or jwt_public_key, not both".into()));
            }
            (None, None) => {
                return Err(ConfigError(
                    "no token key: set jwt_hs256_secret or jwt_public_key".into(),
                ));
            }
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err(ConfigError("jwt_hs256_secret must be at least 32 bytes".into()));
                }
                Key::Hs256(HS256Key::from_bytes(secret.as_bytes()))
            }
            (None, Some(pem)) => {
                let pem = pem.trim();
                if let Ok(k) = ES256PublicKey::from_pem(pem) {
                    Key::Es256(k)
                } else if let Ok(k) = RS256PublicKey::from_pem(pem) {
                    Key::Rs256(Box::new(k))
                } else {
                    return Err(ConfigError(
                        "jwt_public_key is neither an ES256 (P-256) nor an RS256 public key in PEM"
                            .into(),
                    ));
                }
            }
        };
        Ok(Verifier { key, issuer, audience, leeway_s })
    }

    /// The algorithm tokens must use.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Hs256(_) => "HS256",
            Key::Es256(_) => "ES256",
            Key::Rs256(_) => "RS256",
        }
    }

    /// Authenticates an `Authorization` header value at `now_unix_s`.
    pub fn verify(
        &self,
        authorization: Option<&[u8]>,
        now_unix_s: u64,
    ) -> Result<Principal, AuthFailure> {
        let Some(value) = authorization else { return Err(AuthFailure::Missing) };
        let value = std::str::from_utf8(value).map_err(|_| AuthFailure::Invalid)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthFailure::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthFailure::Missing);
        }
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::Invalid);
        }
        let options = VerificationOptions {
            allowed_issuers: self.issuer.as_ref().map(|i| HashSet::from([i.clone()])),
            allowed_audiences: self.audience.as_ref().map(|a| HashSet::from([a.clone()])),
            time_tolerance: Some(Duration::from_secs(self.leeway_s)),
            artificial_time: Some(Duration::from_secs(now_unix_s)),
            max_token_length: Some(MAX_TOKEN_BYTES),
            max_header_length: Some(1024),
            ..Default::default()
        };
        let claims = match &self.key {
            Key::Hs256(k) => k.verify_token::<RoleClaim>(token, Some(options)),
            Key::Es256(k) => k.verify_token::<RoleClaim>(token, Some(options)),
            Key::Rs256(k) => k.verify_token::<RoleClaim>(token, Some(options)),
        }
        .map_err(|e| match e.downcast_ref::<JWTError>() {
            Some(JWTError::TokenHasExpired) => AuthFailure::Expired,
            _ => AuthFailure::Invalid,
        })?;
        if claims.expires_at.is_none() {
            return Err(AuthFailure::Invalid);
        }
        let sub = claims.subject.filter(|s| !s.is_empty() && s.len() <= 128);
        let sub = sub.ok_or(AuthFailure::Invalid)?;
        if sub.chars().any(char::is_control) {
            return Err(AuthFailure::Invalid);
        }
        let role = claims.custom.role.as_deref().and_then(Role::parse);
        Ok(Principal { sub, role })
    }
}

/// Mints an HS256 token (`medinfer token`, tests). `iss`/`aud` are set when given.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    role: &str,
    valid_for_s: u64,
    now_unix_s: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, String> {
    let mut claims = Claims::with_custom_claims(
        RoleClaim { role: Some(role.to_string()) },
        Duration::from_secs(valid_for_s),
    )
    .with_subject(sub);
    claims.issued_at = Some(Duration::from_secs(now_unix_s));
    claims.invalid_before = Some(Duration::from_secs(now_unix_s));
    claims.expires_at = Some(Duration::from_secs(now_unix_s + valid_for_s));
    if let Some(i) = issuer {
        claims = claims.with_issuer(i);
    }
    if let Some(a) = audience {
        claims = claims.with_audience(a);
    }
    HS256Key::from_bytes(secret).authenticate(claims).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn verifier() -> Verifier {
        Verifier::from_config(Some(SECRET), None, Some("iss".into()), Some("aud".into()), 30)
            .unwrap()
    }

    fn header(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn a_good_token_yields_its_subject_and_role() {
        let t =
            mint_hs256(SECRET.as_bytes(), "alice", "operator", 60, NOW, Some("iss"), Some("aud"))
                .unwrap();
        let p = verifier().verify(Some(&header(&t)), NOW + 10).unwrap();
        assert_eq!(p, Principal { sub: "alice".into(), role: Some(Role::Operator) });
    }

    #[test]
    fn expiry_leeway_issuer_and_audience_are_enforced() {
        let v = verifier();
        let t = mint_hs256(SECRET.as_bytes(), "a", "viewer", 60, NOW, Some("iss"), Some("aud"))
            .unwrap();
        assert!(v.verify(Some(&header(&t)), NOW + 60 + 29).is_ok(), "inside the leeway");
        assert_eq!(v.verify(Some(&header(&t)), NOW + 60 + 31), Err(AuthFailure::Expired));
        let t = mint_hs256(SECRET.as_bytes(), "a", "viewer", 60, NOW, Some("other"), Some("aud"))
            .unwrap();
        assert_eq!(v.verify(Some(&header(&t)), NOW), Err(AuthFailure::Invalid));
        let t = mint_hs256(SECRET.as_bytes(), "a", "viewer", 60, NOW, Some("iss"), None).unwrap();
        assert_eq!(v.verify(Some(&header(&t)), NOW), Err(AuthFailure::Invalid));
        assert_eq!(v.verify(None, NOW), Err(AuthFailure::Missing));
        assert_eq!(v.verify(Some(b"Basic abc"), NOW), Err(AuthFailure::Missing));
        assert_eq!(v.verify(Some(b"Bearer x.y.z"), NOW), Err(AuthFailure::Invalid));
    }

    #[test]
    fn short_secrets_and_two_keys_are_refused() {
        assert!(Verifier::from_config(Some("short"), None, None, None, 30).is_err());
        assert!(Verifier::from_config(Some(SECRET), Some("pem"), None, None, 30).is_err());
        assert!(Verifier::from_config(None, Some("not a pem"), None, None, 30).is_err());
    }
}
