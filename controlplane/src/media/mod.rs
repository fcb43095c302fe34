//! The media cache: given a URL, or a `<Say>` text with its voice, the persistent address
//! (content-addressed files) of telephony-ready audio, and the loaded frames a call plays.
//!
//! - **Fetching** goes through the instruction engine's [`Fetcher`] (its SSRF rules: checked
//!   after DNS resolution and on every redirect), with a size limit enforced from
//!   `Content-Length` or while the body streams, a total time limit and a duration limit.
//!   What the origin says about freshness is honoured ([`freshness`]): `max-age`, `Expires`,
//!   `no-cache` (revalidate on every use), `no-store` (played, never kept); a stale entry is
//!   revalidated with `If-None-Match` / `If-Modified-Since` and a 304 keeps the files.
//! - **Preparing** ([`decode`]): WAV, MP3, Ogg/Vorbis, FLAC or raw µ-law → mono → G.711 µ-law
//!   and A-law 20 ms frames (the dataplane's media file layout) and 16/48 kHz PCM, on the
//!   blocking pool.
//! - **Storing**: files are named by the SHA-256 of the source bytes (two URLs with the same
//!   audio share them) and written atomically; the index lives in memory (a hit is a map
//!   lookup) and in the `media_cache` table (entries survive restarts; files without a row are
//!   removed at start). Total size is bounded: least recently used entries are evicted.
//! - **Coalescing**: concurrent requests for one source wait for a single fetch; a failure is
//!   remembered for `failure_ttl_secs` so a broken URL is not fetched by every call.
//!
//! Entries belong to an account (one tenant cannot list another's URLs); files are shared.

pub mod bench;
pub mod decode;
pub mod freshness;

use crate::lock;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use voxedge_dataplane::mediafile;
use voxedge_dataplane::player::PlayMedia;

use crate::config::MediaConfig;
use crate::store::now_us;
use crate::store::{Store, MEDIA};
use crate::voice::audio::{self, Codec, Synthesizer};
use crate::voice::fetch::{FetchError, Fetcher, MediaFetch, Timeouts};
use decode::{DecodeError, Prepared, Variant};

/// What to play.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// Audio at a URL.
    Url(String),
    /// `<Say>`: text rendered by the synthesizer with an espeak-ng voice.
    Say { text: String, voice: String },
}

impl Source {
    /// The index key: SHA-256 over the kind and the source.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Source::Url(u) => {
                h.update(b"url\0");
                h.update(u.as_bytes());
            }
            Source::Say { text, voice } => {
                h.update(b"say\0");
                h.update(voice.as_bytes());
                h.update(b"\0");
                h.update(text.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    fn kind(&self) -> &'static str {
        match self {
            Source::Url(_) => "url",
            Source::Say { .. } => "say",
        }
    }
}

/// Why media could not be had; `code` is Twilio's error code for the notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MediaError {
    pub code: &'static str,
    pub message: String,
}

/// Twilio's code for media that was fetched but cannot be played (format, corruption).
pub const CODE_UNPLAYABLE: &str = "13227";
/// Largest frame file read on the calling task (32 s of G.711); larger ones are read on the
/// blocking pool.
const INLINE_READ_BYTES: u64 = 256 * 1024;
/// Twilio's code for `<Say>` failing.
pub const CODE_SAY_FAILED: &str = "13520";

impl From<FetchError> for MediaError {
    fn from(e: FetchError) -> Self {
        MediaError {
            code: e.code,
            message: e.message,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Served from the cache without asking the origin.
    pub hits: AtomicU64,
    /// Not in the cache (or stale without validators): fetched or rendered.
    pub misses: AtomicU64,
    /// Stale entries revalidated with a conditional request, by outcome.
    pub revalidated_unchanged: AtomicU64,
    pub revalidated_changed: AtomicU64,
    /// Requests that waited for another request's fetch of the same source.
    pub coalesced: AtomicU64,
    /// HTTP requests made (conditional ones included).
    pub fetches: AtomicU64,
    /// Fetches or preparations that failed.
    pub failures: AtomicU64,
    /// Requests answered from the remembered failure of a recent fetch.
    pub failures_remembered: AtomicU64,
    /// Stale copies served because revalidation failed.
    pub stale_served: AtomicU64,
    /// Entries evicted to keep the cache under its size.
    pub evictions: AtomicU64,
    /// Files on disk (bytes, entries) — gauges.
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
}

/// One cached source of an account.
#[derive(Debug, Clone)]
struct Entry {
    sid: String,
    account: String,
    source: Source,
    content: String,
    content_type: Option<String>,
    bytes: u64,
    duration_ms: u64,
    etag: Option<String>,
    last_modified: Option<String>,
    fresh_until_us: i64,
    must_revalidate: bool,
    hits: u64,
    last_used_us: i64,
    fetched_us: i64,
    created_us: i64,
}

type Key = (String, String);

#[derive(Default)]
struct Index {
    entries: HashMap<Key, Entry>,
    /// Content hash → (entries using it, bytes of its files).
    contents: HashMap<String, (u32, u64)>,
    bytes: u64,
    failures: HashMap<Key, (i64, MediaError)>,
    /// Entries whose hit count and last use are not yet written to the store.
    dirty: HashSet<Key>,
}

/// What a lookup resolved to.
#[derive(Debug, Clone)]
enum Resolved {
    /// Files of this content hash.
    Stored(String),
    /// `no-store` media: prepared for this request only.
    Ephemeral(Arc<Prepared>),
}

type Flight = Arc<OnceCell<Result<Resolved, MediaError>>>;

/// The cache service (one per node).
pub struct MediaCache {
    cfg: MediaConfig,
    dir: PathBuf,
    store: Store,
    fetcher: Fetcher,
    synth: Synthesizer,
    timeouts: Timeouts,
    index: Mutex<Index>,
    inflight: Mutex<HashMap<Key, Flight>>,
    /// Frames loaded from files, shared by the calls playing them while any is.
    loaded: Mutex<HashMap<PathBuf, Weak<PlayMedia>>>,
    pub stats: Arc<MediaStats>,
}

impl std::fmt::Debug for MediaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCache")
            .field("dir", &self.dir)
            .finish()
    }
}

fn unplayable(e: DecodeError, what: &str) -> MediaError {
    MediaError {
        code: CODE_UNPLAYABLE,
        message: format!("{what}: {e}"),
    }
}

fn str_of(row: &serde_json::Map<String, Value>, k: &str) -> Option<String> {
    row.get(k).and_then(Value::as_str).map(str::to_string)
}

fn int_of(row: &serde_json::Map<String, Value>, k: &str) -> i64 {
    row.get(k).and_then(Value::as_i64).unwrap_or(0)
}

impl MediaCache {
    /// Opens the cache: loads the index from the store, drops rows whose files are gone and
    /// files no row names (a crash between writing files and their row), and evicts down to
    /// the size bound.
    ///
    /// # Errors
    /// The directory cannot be created or the store read.
    pub async fn open(
        cfg: MediaConfig,
        store: Store,
        fetcher: Fetcher,
        synth: Synthesizer,
    ) -> anyhow::Result<Arc<MediaCache>> {
        let dir = PathBuf::from(&cfg.dir);
        std::fs::create_dir_all(&dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the media cache directory {}: {e}",
                dir.display()
            )
        })?;
        let timeouts = Timeouts {
            total: Duration::from_secs(u64::from(cfg.fetch_timeout_secs)),
            read: Duration::from_secs(u64::from(cfg.fetch_timeout_secs)),
            connect: Duration::from_secs(5)
                .min(Duration::from_secs(u64::from(cfg.fetch_timeout_secs))),
            ..Timeouts::default()
        };
        let cache = Arc::new(MediaCache {
            cfg,
            dir,
            store,
            fetcher,
            synth,
            timeouts,
            index: Mutex::new(Index::default()),
            inflight: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            stats: Arc::new(MediaStats::default()),
        });
        cache.load().await?;
        Ok(cache)
    }

    async fn load(&self) -> anyhow::Result<()> {
        let rows = self.store.all_rows(&MEDIA).await?;
        let mut gone = Vec::new();
        {
            let mut ix = lock(&self.index);
            for row in rows {
                let (Some(sid), Some(account), Some(content)) = (
                    str_of(&row, "sid"),
                    str_of(&row, "account_sid"),
                    str_of(&row, "content_sha256"),
                ) else {
                    continue;
                };
                let source = match str_of(&row, "kind").as_deref() {
                    Some("url") => Source::Url(str_of(&row, "url").unwrap_or_default()),
                    Some("say") => Source::Say {
                        text: str_of(&row, "text").unwrap_or_default(),
                        voice: str_of(&row, "voice").unwrap_or_default(),
                    },
                    _ => continue,
                };
                if !Variant::ALL
                    .iter()
                    .all(|v| self.path(&content, *v).is_file())
                {
                    gone.push((account, sid));
                    continue;
                }
                let e = Entry {
                    sid,
                    account: account.clone(),
                    source: source.clone(),
                    content,
                    content_type: str_of(&row, "content_type"),
                    bytes: u64::try_from(int_of(&row, "bytes")).unwrap_or(0),
                    duration_ms: u64::try_from(int_of(&row, "duration_ms")).unwrap_or(0),
                    etag: str_of(&row, "etag"),
                    last_modified: str_of(&row, "last_modified"),
                    fresh_until_us: int_of(&row, "expires"),
                    must_revalidate: row.get("must_revalidate").and_then(Value::as_bool)
                        == Some(true),
                    hits: u64::try_from(int_of(&row, "hits")).unwrap_or(0),
                    last_used_us: int_of(&row, "date_last_used"),
                    fetched_us: int_of(&row, "date_fetched"),
                    created_us: int_of(&row, "date_created"),
                };
                add_content(&mut ix, &e);
                ix.entries.insert((account, source.key()), e);
            }
            self.gauges(&ix);
        }
        for (account, sid) in gone {
            self.store.delete(&MEDIA, &account, &sid).await?;
        }
        // Files no entry names: a crash after writing them, or temporaries.
        let known: HashSet<String> = lock(&self.index).contents.keys().cloned().collect();
        if let Ok(subdirs) = std::fs::read_dir(&self.dir) {
            for sub in subdirs.flatten() {
                let Ok(files) = std::fs::read_dir(sub.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    let content = name.split('.').next().unwrap_or("");
                    if name.starts_with('.') || !known.contains(content) {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        self.evict(None).await;
        Ok(())
    }

    fn path(&self, content: &str, v: Variant) -> PathBuf {
        path_in(&self.dir, content, v)
    }

    fn gauges(&self, ix: &Index) {
        self.stats.bytes.store(ix.bytes, Ordering::Relaxed);
        self.stats
            .entries
            .store(ix.entries.len() as u64, Ordering::Relaxed);
    }

    /// The frames of `source` for a `codec` call of `account`: from the cache when fresh,
    /// otherwise fetched (or rendered), prepared and stored first.
    ///
    /// # Errors
    /// The fetch, the synthesizer or decoding failed (or failed moments ago).
    pub async fn media(
        &self,
        account: &str,
        source: &Source,
        codec: Codec,
    ) -> Result<Arc<PlayMedia>, MediaError> {
        for _ in 0..2 {
            match self.resolve(account, source).await? {
                Resolved::Ephemeral(p) => {
                    let bytes = p.file(Variant::for_codec(codec)).unwrap_or(&[]);
                    return mediafile::decode(bytes)
                        .map(Arc::new)
                        .map_err(|e| MediaError {
                            code: CODE_UNPLAYABLE,
                            message: e.to_string(),
                        });
                }
                Resolved::Stored(content) => {
                    let path = self.path(&content, Variant::for_codec(codec));
                    match self.frames(&path).await {
                        Ok(m) => return Ok(m),
                        Err(e) => {
                            // Files lost under the entry (evicted meanwhile, removed by hand):
                            // forget it and fetch again, once.
                            tracing::warn!(path = %path.display(), error = %e, "cached media file unreadable; fetching again");
                            self.forget(account, source);
                        }
                    }
                }
            }
        }
        Err(MediaError {
            code: CODE_UNPLAYABLE,
            message: "cached media could not be read".into(),
        })
    }

    /// The loaded frames of a file: shared while any call plays them, else read. A file of up
    /// to [`INLINE_READ_BYTES`] is read in place (from the page cache that is a few
    /// microseconds, less than a hop to the blocking pool); a longer one on the blocking pool.
    async fn frames(&self, path: &Path) -> Result<Arc<PlayMedia>, mediafile::MediaFileError> {
        if let Some(m) = lock(&self.loaded).get(path).and_then(Weak::upgrade) {
            return Ok(m);
        }
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= INLINE_READ_BYTES);
        let read = if small {
            mediafile::read(path)
        } else {
            let p = path.to_path_buf();
            tokio::task::spawn_blocking(move || mediafile::read(&p))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
        };
        let m = Arc::new(read?);
        let mut loaded = lock(&self.loaded);
        if loaded.len() >= 1024 {
            loaded.retain(|_, w| w.strong_count() > 0);
        }
        loaded.insert(path.to_path_buf(), Arc::downgrade(&m));
        Ok(m)
    }

    fn forget(&self, account: &str, source: &Source) {
        let removed = {
            let mut ix = lock(&self.index);
            let removed = ix.entries.remove(&(account.to_string(), source.key()));
            if let Some(e) = &removed {
                drop_content(&mut ix, &e.content);
            }
            self.gauges(&ix);
            removed
        };
        if let Some(e) = removed {
            self.remove_files_if_unused(&e.content);
        }
    }

    /// Prefetches `source` for `account` (REST): its entry's SID.
    ///
    /// # Errors
    /// As [`MediaCache::media`].
    pub async fn prefetch(&self, account: &str, source: &Source) -> Result<String, MediaError> {
        match self.resolve(account, source).await? {
            Resolved::Stored(_) => lock(&self.index)
                .entries
                .get(&(account.to_string(), source.key()))
                .map(|e| e.sid.clone())
                .ok_or_else(|| MediaError {
                    code: CODE_UNPLAYABLE,
                    message: "the media was evicted as soon as it was stored".into(),
                }),
            Resolved::Ephemeral(_) => Err(MediaError {
                code: "11200",
                message: "the origin forbids storing this media (Cache-Control: no-store)".into(),
            }),
        }
    }

    async fn resolve(&self, account: &str, source: &Source) -> Result<Resolved, MediaError> {
        let key = (account.to_string(), source.key());
        let now = now_us();
        {
            let mut ix = lock(&self.index);
            if let Some(e) = ix.entries.get_mut(&key) {
                if now < e.fresh_until_us || matches!(e.source, Source::Say { .. }) {
                    e.hits += 1;
                    e.last_used_us = now;
                    let content = e.content.clone();
                    ix.dirty.insert(key);
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Resolved::Stored(content));
                }
            }
            if let Some((until, err)) = ix.failures.get(&key) {
                if now < *until {
                    self.stats
                        .failures_remembered
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(err.clone());
                }
                ix.failures.remove(&key);
            }
        }
        let (flight, leader) = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f: Flight = Arc::new(OnceCell::new());
                    inflight.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        let result = flight
            .get_or_init(|| self.fill(account, source, key.clone()))
            .await
            .clone();
        {
            let mut inflight = lock(&self.inflight);
            if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(&key);
            }
        }
        result
    }

    /// Fetches (or renders), prepares and stores `source`; revalidates a stale entry.
    async fn fill(&self, account: &str, source: &Source, key: Key) -> Result<Resolved, MediaError> {
        let stale = lock(&self.index).entries.get(&key).cloned();
        let r = self.fill_inner(account, source, &key, stale.as_ref()).await;
        match r {
            Ok(r) => Ok(r),
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if let Some(s) = stale.filter(|s| !s.must_revalidate) {
                    // The origin is failing: a stale copy beats dead air, and the next calls
                    // use it too until the failure would have expired (not one fetch each).
                    tracing::warn!(account, source = ?source, error = %e, "media revalidation failed; serving the stale copy");
                    self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                    let until =
                        now_us() + i64::from(self.cfg.failure_ttl_secs).saturating_mul(1_000_000);
                    if let Some(entry) = lock(&self.index).entries.get_mut(&key) {
                        entry.fresh_until_us = until;
                    }
                    return Ok(Resolved::Stored(s.content));
                }
                let mut ix = lock(&self.index);
                if ix.failures.len() >= 10_000 {
                    let now = now_us();
                    ix.failures.retain(|_, (until, _)| *until > now);
                }
                let until =
                    now_us() + i64::from(self.cfg.failure_ttl_secs).saturating_mul(1_000_000);
                ix.failures.insert(key, (until, e.clone()));
                Err(e)
            }
        }
    }

    async fn fill_inner(
        &self,
        account: &str,
        source: &Source,
        key: &Key,
        stale: Option<&Entry>,
    ) -> Result<Resolved, MediaError> {
        let now = now_us();
        let seconds_max = self.cfg.seconds_max;
        let (body, mono_of, meta) = match source {
            Source::Say { text, voice } => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                let wav = self
                    .synth
                    .speak_wav(text, voice)
                    .await
                    .map_err(|e| MediaError {
                        code: CODE_SAY_FAILED,
                        message: format!("<Say>: {e}"),
                    })?;
                let meta = freshness::Freshness {
                    fresh_until_us: i64::MAX,
                    no_store: false,
                    must_revalidate: false,
                    etag: None,
                    last_modified: None,
                };
                (wav, Decoder::Speech, meta)
            }
            Source::Url(url) => {
                let validators = stale.map_or((None, None), |s| {
                    (s.etag.as_deref(), s.last_modified.as_deref())
                });
                if stale.is_none() || (validators.0.is_none() && validators.1.is_none()) {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.fetches.fetch_add(1, Ordering::Relaxed);
                let fetched = self
                    .fetcher
                    .media(url, validators, self.cfg.file_bytes_max, &self.timeouts)
                    .await
                    .map_err(MediaError::from)?;
                let default_ttl = Duration::from_secs(u64::from(self.cfg.default_ttl_secs));
                match fetched {
                    MediaFetch::NotModified { headers } => {
                        let Some(s) = stale else {
                            return Err(MediaError {
                                code: "11200",
                                message: format!("{url} answered 304 to an unconditional request"),
                            });
                        };
                        self.stats
                            .revalidated_unchanged
                            .fetch_add(1, Ordering::Relaxed);
                        let mut f = freshness::freshness(&headers, now, default_ttl);
                        if !headers.contains_key(reqwest::header::CACHE_CONTROL)
                            && !headers.contains_key(reqwest::header::EXPIRES)
                        {
                            // A 304 updates only the headers it carries (RFC 9111 §4.3.4):
                            // the stored response's lifetime and revalidation rules stay.
                            f.fresh_until_us =
                                now.saturating_add((s.fresh_until_us - s.fetched_us).max(0));
                            f.must_revalidate = s.must_revalidate;
                        }
                        let content = s.content.clone();
                        let updated = {
                            let mut ix = lock(&self.index);
                            let Some(e) = ix.entries.get_mut(key) else {
                                return Ok(Resolved::Stored(content));
                            };
                            e.fresh_until_us = f.fresh_until_us;
                            e.must_revalidate = f.must_revalidate;
                            if f.etag.is_some() {
                                e.etag = f.etag;
                            }
                            if f.last_modified.is_some() {
                                e.last_modified = f.last_modified;
                            }
                            e.fetched_us = now;
                            e.hits += 1;
                            e.last_used_us = now;
                            e.clone()
                        };
                        self.persist(&updated, false).await;
                        return Ok(Resolved::Stored(content));
                    }
                    MediaFetch::Body {
                        body,
                        content_type,
                        headers,
                        url: final_url,
                    } => {
                        if stale.is_some_and(|s| s.etag.is_some() || s.last_modified.is_some()) {
                            self.stats
                                .revalidated_changed
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        let ext = final_url
                            .path_segments()
                            .and_then(|mut s| s.next_back())
                            .and_then(|name| name.rsplit_once('.'))
                            .map(|(_, e)| e.to_ascii_lowercase());
                        let f = freshness::freshness(&headers, now, default_ttl);
                        (body, Decoder::File { content_type, ext }, f)
                    }
                }
            }
        };
        let content = hex::encode(Sha256::digest(&body));
        let what = match source {
            Source::Url(u) => u.clone(),
            Source::Say { .. } => "<Say>".into(),
        };
        let content_type = match &mono_of {
            Decoder::File { content_type, .. } => Some(content_type.clone()),
            Decoder::Speech => None,
        };
        let have_files = Variant::ALL
            .iter()
            .all(|v| self.path(&content, *v).is_file());
        let sized = if meta.no_store || !have_files {
            let dir = self.dir.clone();
            let write = !meta.no_store;
            let c = content.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                let mono = match mono_of {
                    Decoder::Speech => {
                        let pcm = audio::decode_wav(&body)
                            .map_err(|e| DecodeError::Format(e.to_string()))?;
                        decode::from_i16(pcm.rate, &pcm.samples)
                    }
                    Decoder::File { content_type, ext } => {
                        decode::decode(&body, &content_type, ext.as_deref(), seconds_max)?
                    }
                };
                let p = decode::prepare(&mono)?;
                if write {
                    for (v, bytes) in &p.files {
                        mediafile::write_atomic(&path_in(&dir, &c, *v), bytes)
                            .map_err(|e| DecodeError::Corrupt(format!("cannot store: {e}")))?;
                    }
                }
                Ok::<_, DecodeError>(p)
            })
            .await
            .map_err(|e| MediaError {
                code: CODE_UNPLAYABLE,
                message: format!("{what}: preparation failed: {e}"),
            })?
            .map_err(|e| unplayable(e, &what))?;
            if meta.no_store {
                return Ok(Resolved::Ephemeral(Arc::new(prepared)));
            }
            (prepared.bytes(), prepared.duration_ms)
        } else {
            // Same audio as another entry (or as before a 200 that changed nothing).
            let bytes: u64 = Variant::ALL
                .iter()
                .filter_map(|v| std::fs::metadata(self.path(&content, *v)).ok())
                .map(|m| m.len())
                .sum();
            let duration_ms = std::fs::metadata(self.path(&content, Variant::Pcmu))
                .map(|m| m.len().saturating_sub(mediafile::HEADER as u64) / 8)
                .unwrap_or(0);
            (bytes, duration_ms)
        };
        self.store_entry(
            account,
            source,
            key,
            stale,
            &content,
            content_type,
            sized,
            meta,
            now,
        )
        .await;
        Ok(Resolved::Stored(content))
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_entry(
        &self,
        account: &str,
        source: &Source,
        key: &Key,
        stale: Option<&Entry>,
        content: &str,
        content_type: Option<String>,
        (bytes, duration_ms): (u64, u64),
        meta: freshness::Freshness,
        now: i64,
    ) {
        let e = Entry {
            sid: stale.map_or_else(
                || crate::secret::new_sid(MEDIA.sid_prefix),
                |s| s.sid.clone(),
            ),
            account: account.to_string(),
            source: source.clone(),
            content: content.to_string(),
            content_type,
            bytes,
            duration_ms,
            etag: meta.etag,
            last_modified: meta.last_modified,
            fresh_until_us: meta.fresh_until_us,
            must_revalidate: meta.must_revalidate,
            hits: stale.map_or(0, |s| s.hits) + 1,
            last_used_us: now,
            fetched_us: now,
            created_us: stale.map_or(now, |s| s.created_us),
        };
        let replaced = {
            let mut ix = lock(&self.index);
            add_content(&mut ix, &e);
            let old = ix.entries.insert(key.clone(), e.clone());
            if let Some(old) = &old {
                drop_content(&mut ix, &old.content);
            }
            self.gauges(&ix);
            old
        };
        // The source's audio changed: its old files go unless another entry shares them.
        if let Some(old) = replaced.filter(|o| o.content != e.content) {
            self.remove_files_if_unused(&old.content);
        }
        self.persist(&e, stale.is_none()).await;
        self.evict(Some(key)).await;
    }

    /// Writes an entry's row (insert for a new one, else update).
    async fn persist(&self, e: &Entry, new: bool) {
        let (url, text, voice) = match &e.source {
            Source::Url(u) => (Value::from(u.clone()), Value::Null, Value::Null),
            Source::Say { text, voice } => (
                Value::Null,
                Value::from(text.clone()),
                Value::from(voice.clone()),
            ),
        };
        let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::from);
        let mut cols: Vec<(&str, Value)> = vec![
            ("content_sha256", Value::from(e.content.clone())),
            ("content_type", opt(&e.content_type)),
            ("bytes", Value::from(e.bytes)),
            ("duration_ms", Value::from(e.duration_ms)),
            ("etag", opt(&e.etag)),
            ("last_modified", opt(&e.last_modified)),
            ("expires", Value::from(e.fresh_until_us)),
            ("must_revalidate", Value::Bool(e.must_revalidate)),
            ("hits", Value::from(e.hits)),
            ("date_last_used", Value::from(e.last_used_us)),
            ("date_fetched", Value::from(e.fetched_us)),
        ];
        let r = if new {
            cols.extend([
                ("sid", Value::from(e.sid.clone())),
                ("account_sid", Value::from(e.account.clone())),
                ("source_key", Value::from(e.source.key())),
                ("kind", Value::from(e.source.kind())),
                ("url", url),
                ("text", text),
                ("voice", voice),
                ("date_created", Value::from(e.created_us)),
                ("date_updated", Value::from(now_us())),
            ]);
            match self.store.insert(&MEDIA, &cols).await {
                // Another node (sharing PostgreSQL) cached it too: take over its row.
                // A row left for the source (another node sharing PostgreSQL cached it, or
                // this node forgot an entry whose files were lost): this one replaces it.
                Err(crate::store::StoreError::Conflict(_)) => {
                    match self
                        .store
                        .delete_where(&MEDIA, &e.account, "source_key", &e.source.key())
                        .await
                    {
                        Ok(_) => self.store.insert(&MEDIA, &cols).await,
                        Err(err) => Err(err),
                    }
                }
                r => r,
            }
        } else {
            self.store
                .update(&MEDIA, &e.account, &e.sid, &cols)
                .await
                .map(|_| ())
        };
        if let Err(err) = r {
            tracing::warn!(sid = %e.sid, error = %err, "media cache entry not saved (kept in memory)");
        }
    }

    /// Evicts least recently used entries (never `keep`) until the files fit the bound.
    async fn evict(&self, keep: Option<&Key>) {
        let victims = {
            let mut ix = lock(&self.index);
            if ix.bytes <= self.cfg.cache_bytes_max {
                return;
            }
            let mut order: Vec<(i64, Key)> = ix
                .entries
                .iter()
                .filter(|(k, _)| Some(*k) != keep)
                .map(|(k, e)| (e.last_used_us, k.clone()))
                .collect();
            order.sort();
            let mut victims = Vec::new();
            for (_, k) in order {
                if ix.bytes <= self.cfg.cache_bytes_max {
                    break;
                }
                if let Some(e) = ix.entries.remove(&k) {
                    drop_content(&mut ix, &e.content);
                    ix.dirty.remove(&k);
                    victims.push(e);
                }
            }
            self.gauges(&ix);
            victims
        };
        for e in victims {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            self.remove_files_if_unused(&e.content);
            if let Err(err) = self.store.delete(&MEDIA, &e.account, &e.sid).await {
                tracing::warn!(sid = %e.sid, error = %err, "evicted media entry's row not deleted");
            }
        }
    }

    fn remove_files_if_unused(&self, content: &str) {
        if lock(&self.index).contents.contains_key(content) {
            return;
        }
        for v in Variant::ALL {
            let _ = std::fs::remove_file(self.path(content, v));
        }
    }

    /// Removes an entry of `account` by SID (REST purge); whether there was one.
    ///
    /// # Errors
    /// The store failed.
    pub async fn purge(&self, account: &str, sid: &str) -> Result<bool, crate::store::StoreError> {
        let removed = {
            let mut ix = lock(&self.index);
            let key = ix
                .entries
                .iter()
                .find(|(k, e)| k.0 == account && e.sid == sid)
                .map(|(k, _)| k.clone());
            let removed = key.and_then(|k| {
                ix.dirty.remove(&k);
                ix.failures.remove(&k);
                ix.entries.remove(&k)
            });
            if let Some(e) = &removed {
                drop_content(&mut ix, &e.content);
            }
            self.gauges(&ix);
            removed
        };
        if let Some(e) = &removed {
            self.remove_files_if_unused(&e.content);
        }
        let deleted = self.store.delete(&MEDIA, account, sid).await?;
        Ok(removed.is_some() || deleted)
    }

    /// The SID of `account`'s entry for `url` (purge by URL); a failure remembered for it is
    /// forgotten either way, so the next play fetches again.
    pub fn sid_for_url(&self, account: &str, url: &str) -> Option<String> {
        let key = (account.to_string(), Source::Url(url.to_string()).key());
        let mut ix = lock(&self.index);
        ix.failures.remove(&key);
        ix.entries.get(&key).map(|e| e.sid.clone())
    }

    /// Writes hit counts and last uses to the store (they are kept in memory between).
    pub async fn flush(&self) {
        let dirty: Vec<Entry> = {
            let mut ix = lock(&self.index);
            let keys: Vec<Key> = ix.dirty.drain().collect();
            keys.iter()
                .filter_map(|k| ix.entries.get(k).cloned())
                .collect()
        };
        for e in dirty {
            let sets = [
                ("hits", Value::from(e.hits)),
                ("date_last_used", Value::from(e.last_used_us)),
            ];
            if let Err(err) = self.store.update(&MEDIA, &e.account, &e.sid, &sets).await {
                tracing::warn!(sid = %e.sid, error = %err, "media cache hit count not saved");
            }
        }
    }

    /// Flushes hit counts every few seconds until `stop`.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        crate::tasks::spawn_flusher(self, Duration::from_secs(5), stop, |c| async move {
            c.flush().await;
        })
    }
}

/// How the fetched bytes become audio.
enum Decoder {
    /// espeak-ng's WAV.
    Speech,
    File {
        content_type: String,
        ext: Option<String>,
    },
}

fn path_in(dir: &Path, content: &str, v: Variant) -> PathBuf {
    dir.join(content.get(..2).unwrap_or("00"))
        .join(format!("{content}.{}", v.ext()))
}

fn add_content(ix: &mut Index, e: &Entry) {
    let slot = ix.contents.entry(e.content.clone()).or_insert((0, 0));
    if slot.0 == 0 {
        slot.1 = e.bytes;
        ix.bytes += e.bytes;
    }
    slot.0 += 1;
}

fn drop_content(ix: &mut Index, content: &str) {
    if let Some(slot) = ix.contents.get_mut(content) {
        slot.0 = slot.0.saturating_sub(1);
        if slot.0 == 0 {
            ix.bytes = ix.bytes.saturating_sub(slot.1);
            ix.contents.remove(content);
        }
    }
}
