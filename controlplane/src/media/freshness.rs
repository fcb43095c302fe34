//! How long a fetched copy may be served without asking the origin again (RFC 9111), from
//! the response's `Cache-Control`, `Expires`, `Date`, `Age` and `Last-Modified`.

use std::time::{Duration, UNIX_EPOCH};

use reqwest::header::{HeaderMap, AGE, CACHE_CONTROL, DATE, ETAG, EXPIRES, LAST_MODIFIED};

/// What a response allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    /// Serve without revalidating until this time (µs since the epoch); at or before the
    /// fetch time means every use revalidates (`no-cache`, `max-age=0`, a past `Expires`).
    pub fresh_until_us: i64,
    /// `no-store`: keep nothing.
    pub no_store: bool,
    /// `must-revalidate` (or `no-cache`): never serve stale, even when the origin fails.
    pub must_revalidate: bool,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &reqwest::header::HeaderName) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn http_date_us(s: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(s).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_micros()).ok()
}

/// An HTTP date (IMF-fixdate) for `us` since the epoch.
pub fn http_date(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    httpdate::fmt_http_date(t)
}

/// Reads the freshness of a response received at `now_us`. `default_ttl` applies when the
/// response says nothing at all (no `Cache-Control` lifetime, no `Expires`, no
/// `Last-Modified`); with only `Last-Modified`, a tenth of the document's age is used (the
/// usual heuristic), at most `default_ttl`.
pub fn freshness(h: &HeaderMap, now_us: i64, default_ttl: Duration) -> Freshness {
    let mut max_age: Option<i64> = None;
    let (mut no_store, mut no_cache, mut must_revalidate) = (false, false, false);
    for cc in h.get_all(CACHE_CONTROL) {
        let Ok(cc) = cc.to_str() else { continue };
        for d in cc.split(',') {
            let (name, value) = match d.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (d.trim(), None),
            };
            match name.to_ascii_lowercase().as_str() {
                "no-store" => no_store = true,
                "no-cache" => no_cache = true,
                "must-revalidate" | "proxy-revalidate" => must_revalidate = true,
                "max-age" => {
                    // An invalid max-age means stale (RFC 9111 §4.2.1).
                    let secs = value.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                    max_age = Some(max_age.map_or(secs, |m: i64| m.min(secs)));
                }
                _ => {}
            }
        }
    }
    let date = header(h, &DATE).and_then(http_date_us).unwrap_or(now_us);
    let age_us = header(h, &AGE)
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    let lifetime_us = if no_cache {
        0
    } else if let Some(secs) = max_age {
        secs.saturating_mul(1_000_000)
    } else if let Some(expires) = header(h, &EXPIRES) {
        // An invalid Expires (often "0") means already expired.
        http_date_us(expires).map_or(0, |e| e - date)
    } else if let Some(lm) = header(h, &LAST_MODIFIED).and_then(http_date_us) {
        ((date - lm).max(0) / 10).min(i64::try_from(default_ttl.as_micros()).unwrap_or(i64::MAX))
    } else {
        i64::try_from(default_ttl.as_micros()).unwrap_or(i64::MAX)
    };
    Freshness {
        fresh_until_us: now_us.saturating_add(lifetime_us.saturating_sub(age_us).max(0)),
        no_store,
        must_revalidate: must_revalidate || no_cache,
        etag: header(h, &ETAG).map(str::to_string),
        last_modified: header(h, &LAST_MODIFIED).map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    const NOW: i64 = 1_700_000_000_000_000;
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn directives() {
        let f = |pairs: &[(&str, &str)]| freshness(&headers(pairs), NOW, DAY);
        assert_eq!(
            f(&[("cache-control", "public, max-age=60")]).fresh_until_us,
            NOW + 60_000_000
        );
        assert_eq!(
            f(&[("cache-control", "max-age=60"), ("age", "50")]).fresh_until_us,
            NOW + 10_000_000
        );
        let nc = f(&[("cache-control", "no-cache"), ("etag", "\"v1\"")]);
        assert_eq!(nc.fresh_until_us, NOW);
        assert!(nc.must_revalidate);
        assert_eq!(nc.etag.as_deref(), Some("\"v1\""));
        assert!(f(&[("cache-control", "no-store")]).no_store);
        assert_eq!(
            f(&[("cache-control", "max-age=abc")]).fresh_until_us,
            NOW,
            "invalid max-age is stale"
        );
        // Expires counts from the response's Date.
        let date = http_date(NOW);
        let expires = http_date(NOW + 120_000_000);
        assert_eq!(
            f(&[("date", &date), ("expires", &expires)]).fresh_until_us,
            NOW + 120_000_000
        );
        assert_eq!(f(&[("expires", "0")]).fresh_until_us, NOW);
        // max-age wins over Expires.
        assert_eq!(
            f(&[("cache-control", "max-age=5"), ("expires", &expires)]).fresh_until_us,
            NOW + 5_000_000
        );
        // Heuristic: a tenth of the age since Last-Modified, capped.
        let lm = http_date(NOW - 1000 * 1_000_000);
        assert_eq!(
            f(&[("date", &date), ("last-modified", &lm)]).fresh_until_us,
            NOW + 100_000_000
        );
        assert_eq!(f(&[]).fresh_until_us, NOW + 86_400_000_000);
    }
}
