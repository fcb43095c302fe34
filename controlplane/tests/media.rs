//! The media cache against a local origin written for the test (it counts every request):
//! fetch once then serve from cache; a changed ETag refetches; `no-cache` revalidates and a 304
//! keeps the files; 50 concurrent requests for one uncached URL make one fetch; SSRF targets
//! are refused; corrupt, non-audio and oversized files are refused (oversized ones without
//! being read whole); WAV, MP3, Ogg/Vorbis and FLAC decode; `<Say>` renders once; entries
//! survive a restart; least recently used entries are evicted under the size bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voxedge_controlplane::config::MediaConfig;
use voxedge_controlplane::media::{MediaCache, Source};
use voxedge_controlplane::secret::SecretKey;
use voxedge_controlplane::store::Store;
use voxedge_controlplane::voice::audio::{self, Codec, Synthesizer};
use voxedge_controlplane::voice::fetch::{Fetcher, Timeouts};

const MEDIA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/media/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{MEDIA}{name}")).expect("test media (tests/media)")
}

#[derive(Clone, Default)]
struct Origin {
    requests: Arc<Mutex<HashMap<String, usize>>>,
    /// Full bodies sent, per path.
    bodies: Arc<Mutex<HashMap<String, usize>>>,
    version: Arc<AtomicUsize>,
}

impl Origin {
    fn requests(&self, path: &str) -> usize {
        *self.requests.lock().expect("lock").get(path).unwrap_or(&0)
    }

    fn bodies(&self, path: &str) -> usize {
        *self.bodies.lock().expect("lock").get(path).unwrap_or(&0)
    }
}

fn audio_response(ct: &str, cache: &str, body: Vec<u8>) -> Response {
    ([("content-type", ct), ("cache-control", cache)], body).into_response()
}

async fn origin(State(o): State<Origin>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    *o.requests
        .lock()
        .expect("lock")
        .entry(path.clone())
        .or_default() += 1;
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let sent = |r: Response| {
        *o.bodies
            .lock()
            .expect("lock")
            .entry(path.clone())
            .or_default() += 1;
        r
    };
    match path.as_str() {
        "/fresh.wav" => sent(audio_response(
            "audio/wav",
            "max-age=3600",
            fixture("known.wav"),
        )),
        "/stale-nocache.wav" | "/etag.wav" => {
            let v = o.version.load(Ordering::SeqCst);
            let etag = format!("\"v{v}\"");
            if inm.as_deref() == Some(etag.as_str()) {
                return (StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
            }
            let (ct, body) = if v % 2 == 0 {
                ("audio/wav", fixture("known.wav"))
            } else {
                ("audio/flac", fixture("tone.flac"))
            };
            sent(
                (
                    [
                        ("content-type", ct),
                        ("cache-control", "no-cache"),
                        ("etag", etag.as_str()),
                    ],
                    body,
                )
                    .into_response(),
            )
        }
        "/slow.mp3" => {
            tokio::time::sleep(Duration::from_millis(400)).await;
            sent(audio_response(
                "audio/mpeg",
                "max-age=60",
                fixture("tone.mp3"),
            ))
        }
        "/tone.mp3" => sent(audio_response(
            "audio/mpeg",
            "max-age=60",
            fixture("tone.mp3"),
        )),
        "/tone.ogg" => sent(audio_response(
            "audio/ogg",
            "max-age=60",
            fixture("tone.ogg"),
        )),
        "/tone.flac" => sent(audio_response(
            "audio/flac",
            "max-age=60",
            fixture("tone.flac"),
        )),
        "/copy-of-fresh.wav" => sent(audio_response(
            "audio/wav",
            "max-age=60",
            fixture("known.wav"),
        )),
        "/nostore.wav" => sent(audio_response(
            "audio/wav",
            "no-store",
            fixture("known.wav"),
        )),
        "/corrupt.mp3" => sent(audio_response(
            "audio/mpeg",
            "max-age=60",
            b"ID3 this is not an mp3 at all \x00\x01\x02".repeat(40),
        )),
        "/page.html" => sent(
            (
                [("content-type", "text/html")],
                "<html><body>It works!</body></html>",
            )
                .into_response(),
        ),
        "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        // Version 10: Ogg audio, stale at once (max-age=0) but not must-revalidate; 11: the
        // origin fails; 12: different audio (MP3).
        "/flaky" => match o.version.load(Ordering::SeqCst) {
            11 => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
            v => {
                let (ct, body) = if v == 12 {
                    ("audio/mpeg", fixture("tone.mp3"))
                } else {
                    ("audio/ogg", fixture("tone.ogg"))
                };
                let etag = format!("\"v{v}\"");
                sent(
                    (
                        [
                            ("content-type", ct),
                            ("cache-control", "max-age=0"),
                            ("etag", etag.as_str()),
                        ],
                        body,
                    )
                        .into_response(),
                )
            }
        },
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

async fn start_origin() -> (Origin, SocketAddr) {
    let o = Origin::default();
    let app = axum::Router::new().fallback(origin).with_state(o.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (o, addr)
}

/// A raw origin that streams a 64 MiB body (chunked, or with `Content-Length`) and counts the
/// bytes the client let it write before hanging up.
async fn start_huge_origin(content_length: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                let total: u64 = 64 << 20;
                let head = if content_length {
                    format!("HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {total}\r\n\r\n")
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n".into()
                };
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![0x55u8; 64 << 10];
                let mut sent = 0u64;
                while sent < total {
                    let r = if content_length {
                        s.write_all(&chunk).await
                    } else {
                        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                        framed.extend_from_slice(&chunk);
                        framed.extend_from_slice(b"\r\n");
                        s.write_all(&framed).await
                    };
                    let done = tokio::time::timeout(Duration::from_secs(5), async { r });
                    if !matches!(done.await, Ok(Ok(()))) {
                        break;
                    }
                    sent += chunk.len() as u64;
                    w.store(sent, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, written)
}

struct Env {
    dir: PathBuf,
    db: String,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("voxedge-media-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let db = format!("sqlite://{}/store.db", dir.display());
        Env { dir, db }
    }

    fn cfg(&self) -> MediaConfig {
        MediaConfig {
            dir: self.dir.join("cache").display().to_string(),
            file_bytes_max: 1 << 20,
            ..MediaConfig::default()
        }
    }

    async fn open(&self, cfg: MediaConfig, allow_private: bool) -> Arc<MediaCache> {
        let store = Store::connect(
            &self.db,
            SecretKey::from_hex(&"11".repeat(32)).expect("key"),
        )
        .await
        .expect("store");
        let fetcher = Fetcher::new(allow_private, Timeouts::default()).expect("fetcher");
        MediaCache::open(cfg, store, fetcher, Synthesizer::default())
            .await
            .expect("cache opens")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ACC: &str = "AC00000000000000000000000000000001";

fn url(addr: SocketAddr, path: &str) -> Source {
    Source::Url(format!("http://{addr}{path}"))
}

fn known_ulaw() -> Vec<u8> {
    let wav = fixture("known.wav");
    let pcm = audio::decode_wav(&wav).expect("wav");
    assert_eq!(pcm.rate, 8000);
    pcm.samples.iter().map(|s| audio::ulaw(*s)).collect()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        files_in(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_once_revalidates_and_coalesces() {
    let (o, addr) = start_origin().await;
    let env = Env::new("fetch");
    let cache = env.open(env.cfg(), true).await;

    // First play fetches; the second is served from the cache without a request.
    let a = cache
        .media(ACC, &url(addr, "/fresh.wav"), Codec::Pcmu)
        .await
        .expect("plays");
    let b = cache
        .media(ACC, &url(addr, "/fresh.wav"), Codec::Pcmu)
        .await
        .expect("plays again");
    assert_eq!(o.requests("/fresh.wav"), 1, "second play from cache");
    assert!(Arc::ptr_eq(&a, &b), "loaded frames shared while in use");
    // The frames are the WAV's samples in µ-law (8 kHz in, no resampling), padded to 20 ms.
    let want = known_ulaw();
    assert_eq!(&a.frames[..want.len()], &want[..]);
    assert_eq!(a.frame_count(), want.len().div_ceil(160));
    // A-law from the same entry, no further fetch.
    let alaw = cache
        .media(ACC, &url(addr, "/fresh.wav"), Codec::Pcma)
        .await
        .expect("A-law");
    assert_eq!(alaw.payload_type, 8);
    assert_eq!(o.requests("/fresh.wav"), 1);
    assert_eq!(cache.stats.hits.load(Ordering::Relaxed), 2);
    // Another URL with the same bytes shares the files.
    let files = files_in(&env.dir.join("cache"));
    cache
        .media(ACC, &url(addr, "/copy-of-fresh.wav"), Codec::Pcmu)
        .await
        .expect("copy");
    assert_eq!(files_in(&env.dir.join("cache")), files, "content-addressed");

    // no-cache: every use revalidates; a 304 keeps the files.
    let src = url(addr, "/etag.wav");
    let v0 = cache.media(ACC, &src, Codec::Pcmu).await.expect("v0");
    let v0b = cache.media(ACC, &src, Codec::Pcmu).await.expect("v0 again");
    assert_eq!(o.requests("/etag.wav"), 2, "revalidated");
    assert_eq!(o.bodies("/etag.wav"), 1, "304 honoured: no second body");
    assert_eq!(v0.frames, v0b.frames);
    assert_eq!(cache.stats.revalidated_unchanged.load(Ordering::Relaxed), 1);
    // A changed ETag: the new content is fetched and played.
    o.version.store(1, Ordering::SeqCst);
    let v1 = cache.media(ACC, &src, Codec::Pcmu).await.expect("v1");
    assert_eq!(o.bodies("/etag.wav"), 2, "refetched");
    assert_ne!(v1.frames, v0.frames, "new audio");
    assert_eq!(v1.frame_count(), 50, "tone.flac: one second");
    assert_eq!(cache.stats.revalidated_changed.load(Ordering::Relaxed), 1);

    // 50 concurrent calls playing one uncached URL: one fetch.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let c = cache.clone();
        let s = url(addr, "/slow.mp3");
        set.spawn(async move { c.media(ACC, &s, Codec::Pcmu).await.map(|m| m.frame_count()) });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        assert!(r.expect("task").expect("plays") > 40);
        ok += 1;
    }
    assert_eq!(ok, 50);
    assert_eq!(o.requests("/slow.mp3"), 1, "coalesced into one fetch");
    assert!(cache.stats.coalesced.load(Ordering::Relaxed) >= 1);

    // no-store: played, never kept.
    let before = files_in(&env.dir.join("cache"));
    for _ in 0..2 {
        let m = cache
            .media(ACC, &url(addr, "/nostore.wav"), Codec::Pcmu)
            .await
            .expect("no-store plays");
        assert_eq!(&m.frames[..want.len()], &want[..]);
    }
    assert_eq!(o.requests("/nostore.wav"), 2);
    assert_eq!(files_in(&env.dir.join("cache")), before);

    // Another account does not see this account's entries (its own fetch).
    cache
        .media(
            "AC00000000000000000000000000000002",
            &url(addr, "/fresh.wav"),
            Codec::Pcmu,
        )
        .await
        .expect("other account");
    assert_eq!(o.requests("/fresh.wav"), 2);
}

/// While the origin fails, the stale copy plays and the origin is asked again only after the
/// failure TTL (not by every call); when the audio behind the URL changes, the old audio's
/// files go with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_origin_is_asked_once_per_failure_ttl_and_replaced_audio_leaves_no_files() {
    let (o, addr) = start_origin().await;
    let env = Env::new("flaky");
    let cfg = MediaConfig {
        failure_ttl_secs: 1,
        ..env.cfg()
    };
    let cache = env.open(cfg, true).await;
    let src = url(addr, "/flaky");
    o.version.store(10, Ordering::SeqCst);
    let first = cache.media(ACC, &src, Codec::Pcmu).await.expect("plays");
    let files = files_in(&env.dir.join("cache"));
    o.version.store(11, Ordering::SeqCst);
    for _ in 0..3 {
        let m = cache
            .media(ACC, &src, Codec::Pcmu)
            .await
            .expect("the stale copy");
        assert_eq!(m.frames, first.frames);
    }
    assert_eq!(
        o.requests("/flaky"),
        2,
        "one failed revalidation for three calls"
    );
    assert_eq!(cache.stats.stale_served.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    o.version.store(12, Ordering::SeqCst);
    let new = cache
        .media(ACC, &src, Codec::Pcmu)
        .await
        .expect("new audio");
    assert_ne!(new.frames, first.frames);
    assert_eq!(
        files_in(&env.dir.join("cache")),
        files,
        "the old audio's files were replaced, not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_decode_and_bad_media_is_refused() {
    let (o, addr) = start_origin().await;
    let env = Env::new("formats");
    let cache = env.open(env.cfg(), true).await;
    for path in ["/tone.mp3", "/tone.ogg", "/tone.flac"] {
        let m = cache
            .media(ACC, &url(addr, path), Codec::Pcmu)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        // One second of 440 Hz (MP3 adds its encoder delay and padding).
        assert!(
            (50..=56).contains(&m.frame_count()),
            "{path}: {}",
            m.frame_count()
        );
        let samples: Vec<f64> = m.frames[1600..6400]
            .iter()
            .map(|b| f64::from(audio::ulaw_decode(*b)))
            .collect();
        // The level is the tone's (10,000 peak → RMS ≈ 7,071), within codec loss.
        let rms = (samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64).sqrt();
        assert!((5500.0..8500.0).contains(&rms), "{path}: rms {rms}");
        // And its frequency: zero crossings over 0.6 s ≈ 2 × 440 × 0.6.
        let crossings = samples
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!(
            (500..560).contains(&crossings),
            "{path}: {crossings} crossings"
        );
    }

    // Corrupt audio and non-audio: clear errors, remembered briefly (no refetch).
    for (path, code) in [
        ("/corrupt.mp3", "13227"),
        ("/page.html", "13420"),
        ("/fail", "11200"),
    ] {
        let e = cache
            .media(ACC, &url(addr, path), Codec::Pcmu)
            .await
            .expect_err(path);
        assert_eq!(e.code, code, "{path}: {e}");
        assert!(e.message.contains(path), "{path}: {e}");
        let again = cache
            .media(ACC, &url(addr, path), Codec::Pcmu)
            .await
            .expect_err(path);
        assert_eq!(again, e);
        assert_eq!(o.requests(path), 1, "{path}: failure remembered");
    }

    // Over the size limit (1 MiB here): refused without reading the 64 MiB body.
    for content_length in [false, true] {
        let (huge, written) = start_huge_origin(content_length).await;
        let e = cache
            .media(
                ACC,
                &Source::Url(format!("http://{huge}/huge.wav")),
                Codec::Pcmu,
            )
            .await
            .expect_err("too large");
        assert_eq!(e.code, "11750", "{e}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = written.load(Ordering::SeqCst);
        assert!(
            n < 16 << 20,
            "content-length {content_length}: origin wrote {n} bytes"
        );
    }
}

/// This machine's name when it resolves to private or loopback addresses only (as in
/// /etc/hosts on most hosts and containers): a name the resolver must refuse after resolution.
/// (The resolver's own test covers `localhost` whatever the host's name does.)
fn private_hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim().to_string();
    let resolved: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), 80))
        .ok()?
        .collect();
    let private = !resolved.is_empty()
        && resolved.iter().all(|a| match a.ip() {
            std::net::IpAddr::V4(v) => v.is_loopback() || v.is_private() || v.is_link_local(),
            std::net::IpAddr::V6(v) => v.is_loopback() || (v.segments()[0] & 0xfe00) == 0xfc00,
        });
    private.then_some(h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_addresses_are_refused() {
    let (o, addr) = start_origin().await;
    let env = Env::new("ssrf");
    let cache = env.open(env.cfg(), false).await;
    let port = addr.port();
    let mut urls = vec![
        format!("http://127.0.0.1:{port}/fresh.wav"),
        format!("http://localhost:{port}/fresh.wav"),
        "http://169.254.169.254/latest/meta-data/x.wav".to_string(),
        "http://10.1.2.3/x.wav".to_string(),
        "http://[::1]/x.wav".to_string(),
    ];
    // A name that resolves to loopback is refused after resolution: this machine's own name.
    match private_hostname() {
        Some(h) => urls.push(format!("http://{h}:{port}/fresh.wav")),
        None => eprintln!("this machine's name does not resolve to a private address: its case is left to the resolver's unit test"),
    }
    for u in urls {
        let e = cache
            .media(ACC, &Source::Url(u.clone()), Codec::Pcmu)
            .await
            .expect_err(&u);
        eprintln!("{u}: {} {}", e.code, e.message);
        let m = e.message.to_lowercase();
        assert!(
            m.contains("private")
                || m.contains("loopback")
                || m.contains("localhost")
                || m.contains("no address"),
            "{u}: {e}"
        );
    }
    assert_eq!(o.requests("/fresh.wav"), 0, "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_restart_and_lru_evicts() {
    let (o, addr) = start_origin().await;
    let env = Env::new("restart");
    {
        let cache = env.open(env.cfg(), true).await;
        cache
            .media(ACC, &url(addr, "/fresh.wav"), Codec::Pcmu)
            .await
            .expect("plays");
        cache.flush().await;
    }
    // A stray file (a crash between writing files and the row) and a temporary.
    let stray = env
        .dir
        .join("cache")
        .join("ff")
        .join(format!("{}.pcmu", "f".repeat(64)));
    std::fs::create_dir_all(stray.parent().expect("dir")).expect("dir");
    std::fs::write(&stray, b"x").expect("stray");
    let cache = env.open(env.cfg(), true).await;
    assert!(!stray.exists(), "unreferenced file removed at start");
    cache
        .media(ACC, &url(addr, "/fresh.wav"), Codec::Pcmu)
        .await
        .expect("plays after restart");
    assert_eq!(
        o.requests("/fresh.wav"),
        1,
        "served from the cache kept on disk"
    );
    drop(cache);

    // A bound that holds about two entries: the least recently used goes.
    let one = {
        let c = env.open(env.cfg(), true).await;
        c.stats.bytes.load(Ordering::Relaxed)
    };
    assert!(one > 0);
    let cfg = MediaConfig {
        cache_bytes_max: one * 5 / 2,
        file_bytes_max: 1 << 20,
        ..env.cfg()
    };
    let cache = env.open(cfg, true).await;
    for path in ["/tone.mp3", "/fresh.wav", "/tone.ogg"] {
        cache
            .media(ACC, &url(addr, path), Codec::Pcmu)
            .await
            .expect(path);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(cache.stats.evictions.load(Ordering::Relaxed) >= 1);
    assert!(cache.stats.bytes.load(Ordering::Relaxed) <= one * 5 / 2);
    // /tone.mp3 was used least recently: it is fetched again; /tone.ogg is still there.
    cache
        .media(ACC, &url(addr, "/tone.ogg"), Codec::Pcmu)
        .await
        .expect("ogg");
    assert_eq!(o.requests("/tone.ogg"), 1);
    cache
        .media(ACC, &url(addr, "/tone.mp3"), Codec::Pcmu)
        .await
        .expect("mp3");
    assert_eq!(o.requests("/tone.mp3"), 2, "evicted entry fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_renders_once() {
    let env = Env::new("say");
    let cache = env.open(env.cfg(), true).await;
    let src = Source::Say {
        text: "Your call is important to us.".into(),
        voice: audio::espeak_voice(Some("en-US"), None),
    };
    let a = cache
        .media(ACC, &src, Codec::Pcmu)
        .await
        .expect("espeak-ng renders (scripts/test installs it)");
    assert!(a.frame_count() > 50, "over a second of speech");
    let misses = cache.stats.misses.load(Ordering::Relaxed);
    let b = cache.media(ACC, &src, Codec::Pcma).await.expect("cached");
    assert_eq!(
        cache.stats.misses.load(Ordering::Relaxed),
        misses,
        "no second render"
    );
    assert_eq!(a.frame_count(), b.frame_count());
}
