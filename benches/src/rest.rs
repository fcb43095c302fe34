//! `voxedge bench rest`: requests per second and latency of the REST API on the store of your
//! choice (`--database`: a fresh SQLite file by default, or a PostgreSQL URL).
//!
//! Starts `voxedge serve` (dial plan: every number to a sipp UAS that answers 486 Busy, so each
//! created call really goes through SIP and ends at once), creates an account with
//! `voxedge admin account create`, then
//! 1. **create**: `--calls` `POST /Calls` from `--concurrency` client threads;
//! 2. **list**: every client thread walks the account's whole call list page by page
//!    (`--page-size`, following `next_page_uri`).
//!
//! Reports requests/s, latency percentiles and errors for each phase, and voxedge's CPU time.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::proc::{self, Kill};
use crate::relay::free_port;
use crate::workdir::WorkDir;

/// Options of `voxedge bench rest`.
#[derive(Debug, Clone, Args)]
pub struct RestArgs {
    /// Calls to create (and then list).
    #[arg(long, default_value_t = 10_000)]
    pub calls: u32,
    /// Client threads.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// PageSize of the list phase.
    #[arg(long, default_value_t = 50)]
    pub page_size: u32,
    /// Store: `sqlite://FILE` or `postgres://…` (default: a new SQLite file in a temp dir).
    #[arg(long)]
    pub database: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Latencies (µs) and outcomes of one phase.
struct Phase {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    wall: f64,
}

impl Phase {
    fn report(&self) -> Value {
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / 1000.0;
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "wall_s": self.wall,
            "requests_per_s": self.requests as f64 / self.wall.max(1e-9),
            "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": self.hist.max() as f64 / 1000.0},
        })
    }
}

fn hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

pub(crate) fn random_hex(n: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Runs `threads` workers; each calls `work(thread, agent)` which returns the statuses and
/// latencies of the requests it made.
fn run_phase<F>(threads: u32, work: F) -> anyhow::Result<Phase>
where
    F: Fn(u32, &ureq::Agent, &mut Histogram<u64>) -> (u64, u64) + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let total = Arc::new(Mutex::new((hist()?, 0u64, 0u64)));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (work, total) = (work.clone(), total.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                let mut h = hist()?;
                let (n, e) = work(t, &agent, &mut h);
                let mut g = total.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                g.0.add(&h).context("merge")?;
                g.1 += n;
                g.2 += e;
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    let wall = t0.elapsed().as_secs_f64();
    let g = total.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(Phase {
        hist: g.0.clone(),
        requests: g.1,
        errors: g.2,
        wall,
    })
}

/// Runs the bench.
///
/// # Errors
/// sipp missing, voxedge could not start, or the account could not be created.
pub fn main(a: &RestArgs) -> anyhow::Result<()> {
    if Command::new("sipp").arg("-v").output().is_err() {
        bail!("sipp is not installed (apt-get install sip-tester)");
    }
    let dir = WorkDir::create("rest")?;
    let (admin, sip, api, uas_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let database = a
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("bench.db").display()));
    let kind = if database.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let cfg = dir.join("voxedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\ndatabase = \"{database}\"\nsecret_key = \"{key}\"\n\
calls_per_second_per_account = 1000000\ncalls_concurrent_per_account = 1000000\nrequests_per_second_per_account = 1000000\n\
[ng]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"warn\"\n\
[sip]\nlisten = \"127.0.0.1:{sip}\"\ncalls_per_second_max = 100000\ncalls_per_second_per_source_max = 100000\n\
routes = [{{ pattern = \"*\", target = \"sip:127.0.0.1:{uas_port}\" }}]\n\
[dataplane]\nworkers = 1\nbind = \"127.0.0.1\"\nport_min = 20000\nport_max = 32000\n",
            key = random_hex(32)?,
        ),
    )?;
    let (serve, sid, token) = proc::api_node(&cfg, &dir, api)?;
    let auth = proc::basic_auth(&sid, &token);
    let scenario = dir.join("uas_486.xml");
    std::fs::write(&scenario, include_str!("../../tests/sipp/uas_486.xml"))?;
    let _uas = Kill(
        Command::new("sipp")
            .arg("-sf")
            .arg(&scenario)
            .args(["-i", "127.0.0.1", "-p", &uas_port.to_string(), "-nostdin"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start sipp uas")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let base = format!("http://127.0.0.1:{api}");
    let calls_url = format!("{base}/2010-04-01/Accounts/{sid}/Calls.json");
    let cpu0 = proc::cpu_seconds(serve.0.id()).unwrap_or(0.0);

    // Phase 1: create.
    let (n, threads) = (a.calls, a.concurrency.max(1));
    let (url, au) = (calls_url.clone(), auth.clone());
    let create = run_phase(threads, move |t, agent, h| {
        let mut done = (0, 0);
        let mut i = t;
        while i < n {
            let s = Instant::now();
            let r = agent.post(&url).set("Authorization", &au).send_form(&[
                ("To", &format!("+1555{i:07}")),
                ("From", "+15550000000"),
                ("Url", "https://app.example.com/voice"),
            ]);
            let _ = h.record(s.elapsed().as_micros().max(1) as u64);
            done.0 += 1;
            if !matches!(&r, Ok(resp) if resp.status() == 201) {
                done.1 += 1;
            }
            i += threads;
        }
        done
    })?;
    let cpu1 = proc::cpu_seconds(serve.0.id()).unwrap_or(0.0);

    // Let the calls reach their final status (each is refused busy by the UAS).
    std::thread::sleep(Duration::from_secs(2));

    // Phase 2: every thread walks the whole list.
    let (b2, au, size) = (base.clone(), auth.clone(), a.page_size);
    let first = format!("/2010-04-01/Accounts/{sid}/Calls.json?PageSize={size}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let cpu2 = proc::cpu_seconds(serve.0.id()).unwrap_or(0.0);
    let list = run_phase(threads, move |_, agent, h| {
        let mut done = (0, 0);
        let mut rows = 0u64;
        let mut next = Some(first.clone());
        while let Some(uri) = next.take() {
            let s = Instant::now();
            let r = agent
                .get(&format!("{b2}{uri}"))
                .set("Authorization", &au)
                .call();
            let _ = h.record(s.elapsed().as_micros().max(1) as u64);
            done.0 += 1;
            match r.ok().and_then(|r| r.into_json::<Value>().ok()) {
                Some(v) => {
                    rows += v["calls"].as_array().map_or(0, |c| c.len() as u64);
                    next = v["next_page_uri"].as_str().map(str::to_string);
                }
                None => done.1 += 1,
            }
        }
        if let Ok(mut s) = seen2.lock() {
            s.push(rows);
        }
        done
    })?;
    let cpu3 = proc::cpu_seconds(serve.0.id()).unwrap_or(0.0);
    let rows: Vec<u64> = seen.lock().map(|s| s.clone()).unwrap_or_default();
    // Final statuses, for the record.
    let busy = ureq::get(&format!("{calls_url}?Status=busy&PageSize=1000"))
        .set("Authorization", &auth)
        .call()
        .ok()
        .and_then(|r| r.into_json::<Value>().ok());
    drop(serve);
    drop(dir);
    let report = json!({
        "bench": "rest",
        "database": kind,
        "calls": a.calls,
        "concurrency": threads,
        "create": create.report(),
        "create_voxedge_cpu_us_per_request": (cpu1 - cpu0) * 1e6 / f64::from(a.calls.max(1)),
        "list": {
            "page_size": a.page_size,
            "rows_seen_per_walk": rows,
            "phase": list.report(),
            "voxedge_cpu_us_per_request": (cpu3 - cpu2) * 1e6 / (list.requests.max(1) as f64),
        },
        "first_page_of_busy_calls": busy.as_ref().and_then(|b| b["calls"].as_array()).map_or(0, Vec::len),
        "note": "voxedge, its store, sipp and the client threads share this machine's cores",
    });
    if a.json {
        println!("{report}");
    } else {
        let c = &report["create"];
        let l = &report["list"]["phase"];
        println!(
            "voxedge bench rest ({kind}): create {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors); list {}-row pages {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
            c["requests_per_s"].as_f64().unwrap_or(0.0),
            c["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            c["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            c["errors"],
            a.page_size,
            l["requests_per_s"].as_f64().unwrap_or(0.0),
            l["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            l["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            l["errors"],
        );
    }
    Ok(())
}
