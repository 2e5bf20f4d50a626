//! Service configuration: secrets and limits, read through a lookup function so every host
//! can supply it its own way (Spin variables, environment, a TOML file, flags).
//!
//! Names are lowercase snake case (Spin variables must be): `jwt_hs256_secret`,
//! `jwt_public_key`, `jwt_issuer`, `jwt_audience`, `jwt_leeway_s`, `deid_key`,
//! `max_body_bytes`, `max_batch_body_bytes`, `max_batch_items`, `batch_chunk`.

use crate::auth::Verifier;

/// Every name [`Config::from_lookup`] reads.
pub const NAMES: &[&str] = &[
    "jwt_hs256_secret",
    "jwt_public_key",
    "jwt_issuer",
    "jwt_audience",
    "jwt_leeway_s",
    "deid_key",
    "max_body_bytes",
    "max_batch_body_bytes",
    "max_batch_items",
    "batch_chunk",
];

/// A configuration problem, said without the secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Limits on requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest `/infer` body (exclusive), default 50 MiB (the seed's rule).
    pub max_body_bytes: usize,
    /// Largest `/infer/batch` body (exclusive), default 512 MiB: 100 RGB 224² images as
    /// JSON float arrays are about 300 MB.
    pub max_batch_body_bytes: usize,
    /// Most images in one batch, default 100.
    pub max_batch_items: usize,
    /// Images per model run inside a batch, default 8.
    pub batch_chunk: usize,
    /// Largest `limit` on `/results` and `/audit`.
    pub max_page: usize,
    /// Bodies of other routes (none take one): 64 KiB.
    pub max_small_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 50 * 1024 * 1024,
            max_batch_body_bytes: 512 * 1024 * 1024,
            max_batch_items: 100,
            batch_chunk: 8,
            max_page: 1000,
            max_small_body_bytes: 64 * 1024,
        }
    }
}

/// Everything the service is configured with.
#[derive(Debug)]
pub struct Config {
    /// Verifies bearer tokens.
    pub verifier: Verifier,
    /// The secret behind patient pseudonyms (at least 16 bytes).
    pub deid_key: medinfer_core::deid::DeidKey,
    /// Request limits.
    pub limits: Limits,
}

impl Config {
    /// Reads the configuration; `lookup(name)` returns a value or `None` when unset.
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let leeway = parse_num(get("jwt_leeway_s"), "jwt_leeway_s", 30, 0, 300)?;
        let verifier = Verifier::from_config(
            get("jwt_hs256_secret").as_deref(),
            get("jwt_public_key").as_deref(),
            get("jwt_issuer"),
            get("jwt_audience"),
            leeway as u64,
        )?;
        let deid_key = get("deid_key").ok_or_else(|| {
            ConfigError("deid_key is not set (the secret behind patient pseudonyms)".into())
        })?;
        let deid_key = medinfer_core::deid::DeidKey::new(deid_key.as_bytes())
            .map_err(|_| ConfigError("deid_key must be at least 16 bytes".into()))?;
        let d = Limits::default();
        let limits = Limits {
            max_body_bytes: parse_num(
                get("max_body_bytes"),
                "max_body_bytes",
                d.max_body_bytes,
                1024,
                1 << 30,
            )?,
            max_batch_body_bytes: parse_num(
                get("max_batch_body_bytes"),
                "max_batch_body_bytes",
                d.max_batch_body_bytes,
                1024,
                2 << 30,
            )?,
            max_batch_items: parse_num(
                get("max_batch_items"),
                "max_batch_items",
                d.max_batch_items,
                1,
                10_000,
            )?,
            batch_chunk: parse_num(get("batch_chunk"), "batch_chunk", d.batch_chunk, 1, 64)?,
            ..d
        };
        Ok(Config { verifier, deid_key, limits })
    }
}

fn parse_num(
    value: Option<String>,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let Some(value) = value else { return Ok(default) };
    let n: usize =
        value.trim().parse().map_err(|_| ConfigError(format!("{name} must be a whole number")))?;
    if !(min..=max).contains(&n) {
        return Err(ConfigError(format!("{name} must be in {min}..={max}")));
    }
    Ok(n)
}
