//! The `voxedge` binary: `serve`, `media`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use voxedge_controlplane::app::{self, Role};
use voxedge_controlplane::config::{Config, LogFormat};
use voxedge_controlplane::sdnotify;
use voxedge_dataplane::BackendKind;

#[derive(Parser)]
#[command(
    name = "voxedge",
    version,
    about = "VoxEdge media edge appliance and control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Control plane and embedded dataplane in one process (the default single box).
    Serve(RunArgs),
    /// Dataplane appliance only, driven through its management API.
    Media(RunArgs),
    /// Capacity benches.
    Bench(BenchArgs),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Config(RunArgs),
    /// Operator tasks on the store (accounts) and the API description.
    Admin(AdminArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(subcommand)]
    kind: BenchWhat,
}

#[derive(Subcommand)]
enum BenchWhat {
    #[command(flatten)]
    Other(voxedge_bench::BenchKind),
    /// Media cache: cache-hit latency and MP3 → µ-law transcoding throughput.
    Media(voxedge_controlplane::media::bench::MediaArgs),
}

#[derive(Args)]
struct AdminArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    what: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Accounts (tenants).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Print the REST API's OpenAPI document (as served at /openapi.json).
    Openapi,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create a main account; prints its SID and auth token.
    Create {
        #[arg(long)]
        friendly_name: String,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List main accounts and subaccounts (without tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Set an account's status (active, suspended, closed).
    Status {
        sid: String,
        #[arg(value_parser = ["active", "suspended", "closed"])]
        status: String,
        #[arg(long)]
        json: bool,
    },
}

/// Settings shared by the roles. Precedence: flag > environment > file > default.
#[derive(Args, Clone)]
struct RunArgs {
    /// TOML configuration file (unknown keys are rejected).
    #[arg(long, env = "VOXEDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Admin listener (health, metrics).
    #[arg(long, env = "VOXEDGE_ADMIN_LISTEN")]
    admin_listen: Option<std::net::SocketAddr>,
    /// Management API listener (`voxedge media`).
    #[arg(long, env = "VOXEDGE_MANAGEMENT_LISTEN")]
    management_listen: Option<std::net::SocketAddr>,
    /// SIP listener, UDP and TCP (`voxedge serve`).
    #[arg(long, env = "VOXEDGE_SIP_LISTEN")]
    sip_listen: Option<std::net::SocketAddr>,
    /// Dataplane worker threads (0 = auto).
    #[arg(long, env = "VOXEDGE_WORKERS")]
    workers: Option<usize>,
    /// Address media sockets bind to.
    #[arg(long, env = "VOXEDGE_MEDIA_BIND")]
    media_bind: Option<std::net::IpAddr>,
    /// Address announced for media.
    #[arg(long, env = "VOXEDGE_MEDIA_ADVERTISE")]
    media_advertise: Option<std::net::IpAddr>,
    /// First media port.
    #[arg(long, env = "VOXEDGE_PORT_MIN")]
    port_min: Option<u16>,
    /// Last media port.
    #[arg(long, env = "VOXEDGE_PORT_MAX")]
    port_max: Option<u16>,
    /// Do not pin workers to cores.
    #[arg(long, env = "VOXEDGE_NO_PIN")]
    no_pin: bool,
    /// REST API listener (`voxedge serve`).
    #[arg(long, env = "VOXEDGE_API_LISTEN")]
    api_listen: Option<std::net::SocketAddr>,
    /// rtpengine-compatible ng control listener (UDP and TCP).
    #[arg(long, env = "VOXEDGE_NG_LISTEN")]
    ng_listen: Option<std::net::SocketAddr>,
    /// Store: `sqlite://FILE` or `postgres://…`.
    #[arg(long, env = "VOXEDGE_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Log filter (e.g. `info`, `debug`); RUST_LOG wins when set.
    #[arg(long, env = "VOXEDGE_LOG")]
    log: Option<String>,
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        let d = &mut c.dataplane;
        if let Some(v) = self.admin_listen {
            c.admin.listen = v;
        }
        if let Some(v) = self.sip_listen {
            c.sip.listen = v;
        }
        if let Some(v) = self.ng_listen {
            c.ng.listen = v;
        }
        if let Some(v) = self.api_listen {
            c.api.listen = v;
        }
        if let Some(v) = &self.database {
            c.api.database = v.clone();
        }
        if let Some(v) = self.management_listen {
            c.management.listen = v;
        }
        if let Some(v) = self.workers {
            d.workers = v;
        }
        if let Some(v) = self.media_bind {
            d.bind = v;
        }
        if let Some(v) = self.media_advertise {
            d.advertise = Some(v);
        }
        if let Some(v) = self.port_min {
            d.port_min = v;
        }
        if let Some(v) = self.port_max {
            d.port_max = v;
        }
        if self.no_pin {
            d.pin_cores = false;
        }
        if let Some(v) = &self.log {
            c.log.level = v.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(c: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&c.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match c.log.format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Waits for SIGTERM (through `term`, registered before start-up, so a SIGTERM that arrives
/// while the services start still ends the process cleanly) or Ctrl-C.
async fn shutdown_signal(term: Option<tokio::signal::unix::Signal>) {
    let Some(mut term) = term else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn run_role(role: Role, args: &RunArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("voxedge-ctl")
        .build()?;
    rt.block_on(async move {
        // Before anything answers (health, READY=1): SIGTERM's default action would otherwise
        // kill a process that already looks up.
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let running = app::start(role, cfg, BackendKind::Socket).await?;
        let notifier = sdnotify::Notifier::from_env();
        if let Some(n) = &notifier {
            n.notify(&format!(
                "READY=1\nSTATUS=serving: admin {}, {} dataplane worker(s)",
                running.admin,
                running.dataplane.workers().count()
            ));
        }
        // The watchdog is fed only while every dataplane worker is running and its loop makes
        // progress (its published loop time advances between ticks), so a dead or stuck worker
        // gets the service restarted.
        let watchdog = match (&notifier, sdnotify::watchdog_interval()) {
            (Some(n), Some(every)) => {
                let (n, dp) = (n.clone(), running.dataplane.clone());
                Some(tokio::spawn(async move {
                    use std::sync::atomic::Ordering;
                    let mut tick = tokio::time::interval(every);
                    let mut last: Vec<u64> = Vec::new();
                    loop {
                        tick.tick().await;
                        let now: Vec<u64> = dp
                            .workers()
                            .map(|w| w.wall_ns.load(Ordering::Relaxed))
                            .collect();
                        let running = dp.workers().all(|w| w.running.load(Ordering::Acquire));
                        let progressing =
                            last.len() != now.len() || now.iter().zip(&last).all(|(a, b)| a != b);
                        if running && progressing {
                            n.notify("WATCHDOG=1");
                        } else {
                            tracing::error!(
                                running,
                                progressing,
                                "a dataplane worker stopped or is stuck; not feeding the watchdog"
                            );
                        }
                        last = now;
                    }
                }))
            }
            _ => None,
        };
        shutdown_signal(term).await;
        if let Some(n) = &notifier {
            n.notify("STOPPING=1");
        }
        if let Some(w) = watchdog {
            w.abort();
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn admin(a: &AdminArgs) -> anyhow::Result<()> {
    use voxedge_controlplane::store::{rfc2822, Store};
    if let AdminCommand::Openapi = a.what {
        println!(
            "{}",
            serde_json::to_string_pretty(&voxedge_controlplane::rest::routes::openapi())?
        );
        return Ok(());
    }
    let cfg = a.run.config()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let key = app::secret_key(&cfg.api)?;
        let store = Store::connect(&cfg.api.database, key).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot open the store {}: {e}",
                app::shown_db(&cfg.api.database)
            )
        })?;
        match &a.what {
            AdminCommand::Account(AccountCommand::Create {
                friendly_name,
                json,
            }) => {
                let (acc, token) = store.create_account(friendly_name, None).await?;
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "sid": acc.sid, "auth_token": token,
                            "friendly_name": acc.friendly_name, "status": acc.status,
                            "date_created": rfc2822(acc.date_created),
                        })
                    );
                } else {
                    println!("account created\nsid: {}\nauth_token: {token}", acc.sid);
                }
            }
            AdminCommand::Account(AccountCommand::List { json }) => {
                let rows = store.all_accounts().await?;
                if *json {
                    let v: Vec<_> = rows
                        .iter()
                        .map(|a| {
                            serde_json::json!({
                                "sid": a.sid, "owner_account_sid": a.owner_account_sid,
                                "friendly_name": a.friendly_name, "status": a.status,
                                "date_created": rfc2822(a.date_created),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(v));
                } else {
                    for a in rows {
                        println!(
                            "{} {:9} {}{}",
                            a.sid,
                            a.status,
                            a.friendly_name,
                            a.owner_account_sid
                                .map(|o| format!(" (subaccount of {o})"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            AdminCommand::Account(AccountCommand::Status { sid, status, json }) => {
                if store.account(sid).await?.is_none() {
                    anyhow::bail!("no account {sid}");
                }
                store.update_account(sid, None, Some(status)).await?;
                if *json {
                    println!("{}", serde_json::json!({"sid": sid, "status": status}));
                } else {
                    println!("{sid}: {status}");
                }
            }
            AdminCommand::Openapi => {}
        }
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(a) => run_role(Role::Serve, a),
        Command::Media(a) => run_role(Role::Media, a),
        Command::Bench(b) => match &b.kind {
            BenchWhat::Other(kind) => voxedge_bench::run_kind(kind),
            BenchWhat::Media(a) => voxedge_controlplane::media::bench::main(a),
        },
        Command::Config(a) => a.config().and_then(|c| {
            print!("{}", toml::to_string(&c)?);
            Ok(())
        }),
        Command::Admin(a) => admin(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxedge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
