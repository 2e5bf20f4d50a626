//! The clock and randomness port, and RFC 3339 timestamps.

/// What the service needs from its host besides storage.
pub trait Platform: Send + Sync {
    /// Wall-clock time, milliseconds since the Unix epoch (UTC).
    fn now_unix_ms(&self) -> i64;
    /// A monotonic clock in milliseconds from an arbitrary origin (for stage timings).
    fn monotonic_ms(&self) -> f64;
    /// Fills `buf` with cryptographically secure random bytes.
    fn fill_random(&self, buf: &mut [u8]);
}

/// The host's real clock and randomness through `std` and `getrandom` — the same code on
/// native targets and on `wasm32-wasip2` (WASI clocks and random).
#[derive(Debug)]
pub struct SystemPlatform {
    origin: std::time::Instant,
}

impl Default for SystemPlatform {
    fn default() -> Self {
        SystemPlatform { origin: std::time::Instant::now() }
    }
}

impl Platform for SystemPlatform {
    fn now_unix_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1e3
    }

    fn fill_random(&self, buf: &mut [u8]) {
        // Without randomness ids could collide and tokens could be guessed: stop rather
        // than go on. getrandom fails only on hosts with no entropy source at all.
        #[allow(clippy::expect_used)]
        getrandom::fill(buf).expect("the host has no secure random source");
    }
}

/// A random version-4 UUID, lowercase hyphenated.
pub fn uuid_v4(platform: &dyn Platform) -> String {
    let mut b = [0u8; 16];
    platform.fill_random(&mut b);
    medinfer_core::uuid_v4(b)
}

/// `unix_ms` as RFC 3339 UTC with milliseconds, e.g. `2026-11-25T18:10:27.123Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_630_227_123), "2026-11-25T18:10:27.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn uuids_are_version_4() {
        let p = SystemPlatform::default();
        let a = uuid_v4(&p);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(a, uuid_v4(&p));
    }
}
