//! Running the roles: `serve` (dataplane + admin; SIP and REST join later) and `media`
//! (dataplane + admin + management API). [`start`] binds everything and returns the bound
//! addresses, so tests run it in-process on port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use voxedge_dataplane::{BackendKind, Dataplane, MemoryNet};

use crate::config::Config;
use crate::http::{admin_router, management_router, AppState};
use crate::metrics::BusyWindow;

/// Which process role to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Media,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Media => "media",
        }
    }
}

/// A started process: bound addresses and the means to stop it.
pub struct Running {
    pub admin: SocketAddr,
    pub management: Option<SocketAddr>,
    /// SIP listeners (serve role).
    pub sip_udp: Option<SocketAddr>,
    pub sip_tcp: Option<SocketAddr>,
    pub sip_stats: Option<Arc<crate::sip::SipStats>>,
    /// The REST API listener and its store (serve role).
    pub api: Option<SocketAddr>,
    pub store: Option<crate::store::Store>,
    /// The ng listener (UDP; TCP on the same port) and its counters.
    pub ng: Option<SocketAddr>,
    pub ng_stats: Option<Arc<crate::ng::NgStats>>,
    pub dataplane: Arc<Dataplane>,
    /// The in-memory network, when started with the memory backend.
    pub memory: Option<MemoryNet>,
    /// The instruction engine (serve role with SIP and the API).
    pub engine: Option<Arc<crate::voice::engine::Engine>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops listeners, waits for in-flight requests, then stops the workers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let dp = self.dataplane;
        // Workers are joined when the last handle drops; do that off the async threads.
        let _ = tokio::task::spawn_blocking(move || drop(dp)).await;
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Starts a role. With `backend = Memory` the dataplane runs on the in-memory network (tests).
///
/// # Errors
/// Invalid configuration, a port that cannot be bound, or a dataplane that cannot start; each
/// message names what failed.
pub async fn start(role: Role, cfg: Config, backend: BackendKind) -> anyhow::Result<Running> {
    cfg.validate()?;
    let admin_listener = bind(cfg.admin.listen, "admin (dataplane health and metrics)").await?;
    let mgmt_listener = match role {
        Role::Media => Some(bind(cfg.management.listen, "the management API").await?),
        Role::Serve => None,
    };
    let dp_cfg = cfg.dataplane.clone();
    let (dataplane, memory) = tokio::task::spawn_blocking(move || match backend {
        BackendKind::Memory => Dataplane::start_memory(dp_cfg).map(|(d, m)| (d, Some(m))),
        // Socket or DPDK, as `dataplane.backend` says.
        BackendKind::Socket | BackendKind::Dpdk => Dataplane::start(dp_cfg).map(|d| (d, None)),
    })
    .await
    .context("dataplane start-up task failed")?
    .context("cannot start the dataplane")?;
    let dataplane = Arc::new(dataplane);
    let workers: Vec<i64> = dataplane
        .workers()
        .map(|w| w.pinned_core.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    tracing::info!(
        role = role.name(),
        backend = dataplane.backend().as_str(),
        workers = workers.len(),
        pinned_cores = ?workers,
        ports = %format!("{}-{}", cfg.dataplane.port_min, cfg.dataplane.port_max),
        bind = %cfg.dataplane.bind,
        advertise = %dataplane.advertise(),
        "dataplane started"
    );
    let state = Arc::new(AppState {
        dataplane: dataplane.clone(),
        busy: BusyWindow::default(),
        list_limit_max: cfg.management.list_limit_max,
        role: role.name(),
        sip: std::sync::OnceLock::new(),
        media: std::sync::OnceLock::new(),
        ng: std::sync::OnceLock::new(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let admin = admin_listener.local_addr()?;
    tasks.push(serve_http(
        admin_listener,
        admin_router(state.clone()),
        stop_rx.clone(),
    ));
    tracing::info!(%admin, "admin listener (GET /health, GET /metrics)");
    let mut management = None;
    if let Some(l) = mgmt_listener {
        let addr = l.local_addr()?;
        management = Some(addr);
        tasks.push(serve_http(
            l,
            management_router(state.clone(), cfg.management.body_bytes_max),
            stop_rx.clone(),
        ));
        tracing::info!(%addr, "management API (/v1/relays)");
    }
    let mut sip = None;
    let mut sip_handle = None;
    let (updates_tx, updates_rx) = tokio::sync::mpsc::unbounded_channel();
    if role == Role::Serve && cfg.sip.enabled {
        let svc = crate::sip::start(
            &cfg.sip,
            dataplane.clone(),
            Some(updates_tx),
            cfg.api.sip_uri_calls,
            cfg.api.enabled,
            stop_rx.clone(),
        )
        .await?;
        let _ = state.sip.set(svc.stats.clone());
        sip = Some((svc.udp, svc.tcp, svc.stats.clone()));
        sip_handle = Some(svc.handle.clone());
        tasks.extend(svc.tasks);
    }
    let mut api = None;
    let mut store = None;
    let mut engine: Option<Arc<crate::voice::engine::Engine>> = None;
    let mut media_cache = None;
    let mut recordings = None;
    if role == Role::Serve && cfg.api.enabled {
        let listener = bind(cfg.api.listen, "the REST API").await?;
        let key = secret_key(&cfg.api)?;
        let db = crate::store::Store::connect(&cfg.api.database, key)
            .await
            .with_context(|| format!("cannot open the store {}", shown_db(&cfg.api.database)))?;
        let (callbacks, deliverer) = crate::callbacks::Callbacks::start(
            db.clone(),
            cfg.api.callbacks_allow_private,
            stop_rx.clone(),
        )?;
        tasks.push(deliverer);
        let calls = crate::calls::CallService::start(
            db.clone(),
            sip_handle.clone(),
            (
                cfg.api.calls_per_second_per_account,
                cfg.api.calls_concurrent_per_account,
            ),
            Some(callbacks),
            updates_rx,
        );
        if let Some(sip) = sip_handle.clone() {
            let fetcher = crate::voice::fetch::Fetcher::new(
                cfg.api.callbacks_allow_private,
                crate::voice::fetch::Timeouts::default(),
            )?;
            let media_fetcher = match cfg.media.allow_private {
                Some(allow) if allow != cfg.api.callbacks_allow_private => {
                    crate::voice::fetch::Fetcher::new(
                        allow,
                        crate::voice::fetch::Timeouts::default(),
                    )?
                }
                _ => fetcher.clone(),
            };
            let media = crate::media::MediaCache::open(
                cfg.media.clone(),
                db.clone(),
                media_fetcher,
                crate::voice::audio::Synthesizer::default(),
            )
            .await
            .context("cannot open the media cache")?;
            let _ = state.media.set(media.stats.clone());
            tasks.push(media.spawn_flusher(stop_rx.clone()));
            let api_addr = listener.local_addr()?;
            let base = cfg.api.public_url.clone().unwrap_or_else(|| {
                let ip = if api_addr.ip().is_unspecified() {
                    dataplane.advertise()
                } else {
                    api_addr.ip()
                };
                format!("http://{}", std::net::SocketAddr::new(ip, api_addr.port()))
            });
            let rec = Arc::new(
                crate::recordings::Recordings::new(
                    std::path::Path::new(&cfg.media.recordings_dir),
                    base,
                    cfg.api.recordings_require_auth,
                )
                .with_context(|| {
                    format!(
                        "cannot create the recordings directory {}",
                        cfg.media.recordings_dir
                    )
                })?,
            );
            let e = crate::voice::engine::Engine::new(
                db.clone(),
                calls.clone(),
                sip,
                dataplane.clone(),
                fetcher,
                media.clone(),
                rec.clone(),
            );
            tasks.push(e.spawn_usage_flusher(stop_rx.clone()));
            recordings = Some(rec);
            media_cache = Some(media);
            calls.set_engine(e.clone());
            engine = Some(e);
        }
        if db.backend() == crate::store::Backend::Sqlite {
            let n = calls
                .recover()
                .await
                .context("cannot recover calls left live")?;
            if n > 0 {
                tracing::warn!(calls = n, "calls left live by the previous run were ended");
            }
            if let Some(e) = &engine {
                let n = e
                    .conferences()
                    .recover()
                    .await
                    .context("cannot end conferences left live")?;
                if n > 0 {
                    tracing::warn!(
                        conferences = n,
                        "conferences left live by the previous run were ended"
                    );
                }
            }
        }
        {
            // Event streams end when the node stops (graceful shutdown waits for them).
            let (hub, mut stop) = (calls.events().clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                hub.close();
            }));
        }
        let rest = Arc::new(crate::rest::RestState::new(
            db.clone(),
            calls,
            sip_handle.clone(),
            cfg.api.clone(),
            media_cache,
            recordings,
        ));
        let addr = listener.local_addr()?;
        tasks.push(serve_http(
            listener,
            crate::rest::router(rest),
            stop_rx.clone(),
        ));
        tracing::info!(%addr, database = %shown_db(&cfg.api.database), "REST API (/2010-04-01, /openapi.json)");
        api = Some(addr);
        store = Some(db);
    }
    let mut ng = None;
    if cfg.ng.enabled {
        let svc = crate::ng::start(&cfg.ng, dataplane.clone(), stop_rx.clone()).await?;
        let _ = state.ng.set(svc.stats.clone());
        ng = svc.udp.map(|a| (a, svc.stats.clone()));
        tasks.extend(svc.tasks);
    }
    tasks.push(drain_events(
        dataplane.clone(),
        engine.clone(),
        sip_handle.clone(),
        stop_rx,
    ));
    Ok(Running {
        admin,
        management,
        sip_udp: sip.as_ref().and_then(|s| s.0),
        sip_tcp: sip.as_ref().and_then(|s| s.1),
        sip_stats: sip.map(|s| s.2),
        api,
        store,
        ng_stats: ng.as_ref().map(|n| n.1.clone()),
        ng: ng.map(|n| n.0),
        dataplane,
        memory,
        engine,
        stop,
        tasks,
    })
}

/// The database URL without its password, for logs and errors.
pub fn shown_db(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The key that seals secrets in the store: `VOXEDGE_SECRET_KEY`, then `api.secret_key`, then
/// (SQLite only) the key file, created on first start.
///
/// # Errors
/// A malformed key, PostgreSQL without a configured key, or an unusable key file.
pub fn secret_key(api: &crate::config::ApiConfig) -> anyhow::Result<crate::secret::SecretKey> {
    use crate::secret::SecretKey;
    if let Ok(k) = std::env::var("VOXEDGE_SECRET_KEY") {
        return SecretKey::from_hex(&k).context("VOXEDGE_SECRET_KEY");
    }
    if let Some(k) = &api.secret_key {
        return SecretKey::from_hex(k).context("api.secret_key");
    }
    if !api.database.starts_with("sqlite:") {
        anyhow::bail!(
            "api.secret_key (or VOXEDGE_SECRET_KEY) is required with PostgreSQL: control nodes sharing the database must share the key"
        );
    }
    Ok(SecretKey::from_file_or_create(std::path::Path::new(
        &api.secret_key_file,
    ))?)
}

fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    })
}

/// Media events go to the instruction engine (digits, playback ends) and, for media timeouts,
/// to the SIP service (which hangs up silent calls); all are logged at debug level. A blocking
/// thread waits on the channel so digits reach their call without polling delay.
fn drain_events(
    dp: Arc<Dataplane>,
    engine: Option<Arc<crate::voice::engine::Engine>>,
    sip: Option<crate::sip::SipHandle>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        // Ends on stop, or when the sender is gone (a `Running` dropped without shutdown):
        // a blocking thread left running would keep its runtime from shutting down.
        while !*stop.borrow() && stop.has_changed().is_ok() {
            let Ok(ev) = dp
                .events()
                .recv_timeout(std::time::Duration::from_millis(100))
            else {
                continue;
            };
            if let Some(e) = &engine {
                e.media_event(&ev);
            }
            if let (Some(s), voxedge_dataplane::command::MediaEvent::MediaTimeout { relay, side }) =
                (&sip, &ev)
            {
                // Fails only once the SIP service has stopped (shutting down).
                let _ = s.media_timeout_blocking(*relay, *side);
            }
            tracing::debug!(event = ?ev, "media event");
        }
    })
}
