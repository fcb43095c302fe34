//! The durable store: sqlx over SQLite (default, a file) or PostgreSQL (`postgres://…`), one
//! set of portable SQL migrations, applied at start.
//!
//! Resources are rows of tables described by [`Table`]: their columns are named as the
//! Twilio JSON fields they become, so one generic insert / fetch / list / update / delete
//! serves applications, numbers, calls, events, notifications and recordings. Accounts and API
//! keys have their own functions because their secrets are sealed ([`SecretKey`]).
//! Every query of a tenant's resource names the account, so one tenant cannot read another's
//! rows by guessing a SID.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::secret::{self, SecretError, SecretKey};

/// One migration per file, in order; never edit an applied one, add the next.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("0001_init.sql")),
    (2, include_str!("0002_list_indexes.sql")),
    (3, include_str!("0003_callbacks.sql")),
    (4, include_str!("0004_fetch_overrides.sql")),
    (5, include_str!("0005_sip_events.sql")),
    (6, include_str!("0006_media_cache.sql")),
    (7, include_str!("0007_module_usage.sql")),
    (8, include_str!("0008_callback_policy.sql")),
    (9, include_str!("0009_conferences.sql")),
];

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Conflict(String),
}

/// How a column is stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TEXT, shown as a string or null.
    Text,
    /// BIGINT, shown as a number or null.
    Int,
    /// BIGINT, shown as a decimal string (Twilio shows durations that way).
    IntString,
    /// BIGINT microseconds, shown as an RFC 2822 date.
    Time,
    /// BIGINT 0/1, shown as a boolean.
    Bool,
}

/// A table of a tenant's resources.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub sid_prefix: &'static str,
    /// All columns but `sid` and `account_sid`, named as their JSON fields.
    pub columns: &'static [(&'static str, Kind)],
}

impl Table {
    pub fn kind(&self, column: &str) -> Option<Kind> {
        match column {
            "sid" | "account_sid" => Some(Kind::Text),
            _ => self
                .columns
                .iter()
                .find(|(c, _)| *c == column)
                .map(|(_, k)| *k),
        }
    }
}

use Kind::{Bool, Int, IntString, Text, Time};

pub const APPLICATIONS: Table = Table {
    name: "applications",
    sid_prefix: "AP",
    columns: &[
        ("friendly_name", Text),
        ("api_version", Text),
        ("voice_url", Text),
        ("voice_method", Text),
        ("voice_fallback_url", Text),
        ("voice_fallback_method", Text),
        ("status_callback", Text),
        ("status_callback_method", Text),
        ("voice_caller_id_lookup", Bool),
        ("public_application_connect_enabled", Bool),
        ("voice_fetch_overrides", Text),
        ("sip_events_url", Text),
        ("sip_events_method", Text),
        ("sip_events", Text),
        ("sip_events_headers", Text),
        ("sip_events_filter", Text),
        ("callback_attempts", Int),
        ("callback_backoff_ms", Int),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

pub const NUMBERS: Table = Table {
    name: "incoming_phone_numbers",
    sid_prefix: "PN",
    columns: &[
        ("phone_number", Text),
        ("friendly_name", Text),
        ("api_version", Text),
        ("voice_application_sid", Text),
        ("voice_url", Text),
        ("voice_method", Text),
        ("voice_fallback_url", Text),
        ("voice_fallback_method", Text),
        ("status_callback", Text),
        ("status_callback_method", Text),
        ("voice_caller_id_lookup", Bool),
        ("status", Text),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

pub const CALLS: Table = Table {
    name: "calls",
    sid_prefix: "CA",
    columns: &[
        ("parent_call_sid", Text),
        ("application_sid", Text),
        ("direction", Text),
        ("from", Text),
        ("to", Text),
        ("from_formatted", Text),
        ("to_formatted", Text),
        ("caller_name", Text),
        ("forwarded_from", Text),
        ("status", Text),
        ("url", Text),
        ("method", Text),
        ("twiml", Text),
        ("fallback_url", Text),
        ("fallback_method", Text),
        ("status_callback", Text),
        ("status_callback_method", Text),
        ("status_callback_event", Text),
        ("sip_events_url", Text),
        ("sip_events_method", Text),
        ("sip_events", Text),
        ("sip_events_headers", Text),
        ("sip_events_filter", Text),
        ("timeout", Int),
        ("time_limit", Int),
        ("send_digits", Text),
        ("record", Bool),
        ("sip_response_code", Int),
        ("queue_time", IntString),
        ("start_time", Time),
        ("end_time", Time),
        ("duration", IntString),
        ("price", Text),
        ("price_unit", Text),
        ("api_version", Text),
        ("callback_attempts", Int),
        ("callback_backoff_ms", Int),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

pub const CALL_EVENTS: Table = Table {
    name: "call_events",
    sid_prefix: "EV",
    columns: &[
        ("call_sid", Text),
        ("request", Text),
        ("response", Text),
        ("date_created", Time),
    ],
};

pub const NOTIFICATIONS: Table = Table {
    name: "notifications",
    sid_prefix: "NO",
    columns: &[
        ("call_sid", Text),
        ("api_version", Text),
        ("log", Text),
        ("error_code", Text),
        ("more_info", Text),
        ("message_text", Text),
        ("message_date", Time),
        ("request_url", Text),
        ("request_method", Text),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

pub const RECORDINGS: Table = Table {
    name: "recordings",
    sid_prefix: "RE",
    columns: &[
        ("call_sid", Text),
        ("conference_sid", Text),
        ("api_version", Text),
        ("status", Text),
        ("source", Text),
        ("channels", Int),
        ("duration", IntString),
        ("start_time", Time),
        ("media_path", Text),
        ("error_code", Text),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

pub const CONFERENCES: Table = Table {
    name: "conferences",
    sid_prefix: "CF",
    columns: &[
        ("friendly_name", Text),
        ("status", Text),
        ("region", Text),
        ("api_version", Text),
        ("reason_conference_ended", Text),
        ("call_sid_ending_conference", Text),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

/// Participants present in a conference; `sid` is the participant's call SID.
pub const PARTICIPANTS: Table = Table {
    name: "conference_participants",
    sid_prefix: "CA",
    columns: &[
        ("conference_sid", Text),
        ("call_sid", Text),
        ("label", Text),
        ("call_sid_to_coach", Text),
        ("coaching", Bool),
        ("muted", Bool),
        ("hold", Bool),
        ("start_conference_on_enter", Bool),
        ("end_conference_on_exit", Bool),
        ("status", Text),
        ("api_version", Text),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

/// The media cache's index (see [`crate::media`]).
pub const MEDIA: Table = Table {
    name: "media_cache",
    sid_prefix: "ME",
    columns: &[
        ("source_key", Text),
        ("kind", Text),
        ("url", Text),
        ("text", Text),
        ("voice", Text),
        ("content_sha256", Text),
        ("content_type", Text),
        ("bytes", Int),
        ("duration_ms", Int),
        ("etag", Text),
        ("last_modified", Text),
        ("expires", Time),
        ("must_revalidate", Bool),
        ("hits", Int),
        ("date_last_used", Time),
        ("date_fetched", Time),
        ("date_created", Time),
        ("date_updated", Time),
    ],
};

/// Microseconds since the epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 2822 date as Twilio writes it: `Wed, 18 Aug 2010 20:20:06 +0000`.
pub fn rfc2822(us: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let wd = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let mon = MONTHS[usize::try_from(m - 1).unwrap_or(0)];
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DD` → microseconds at the start of that UTC day.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if s.len() != 10
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
        || !(1970..=9999).contains(&y)
    {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 * 1_000_000)
}

/// A stored account (the auth token stays sealed until asked for).
#[derive(Debug, Clone)]
pub struct Account {
    pub sid: String,
    pub owner_account_sid: Option<String>,
    pub friendly_name: String,
    pub status: String,
    pub kind: String,
    pub auth_token_sealed: String,
    pub date_created: i64,
    pub date_updated: i64,
}

/// A stored API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub sid: String,
    pub account_sid: String,
    pub friendly_name: String,
    pub secret_sealed: String,
    pub date_created: i64,
    pub date_updated: i64,
}

/// A callback in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub sid: String,
    pub account_sid: String,
    pub call_sid: String,
    pub seq: i64,
    pub url: String,
    pub method: String,
    /// The form parameters, as a JSON object of strings.
    pub params: String,
    pub attempts: i64,
    /// When it became due (µs): the claim below is conditional on it.
    pub next_attempt: i64,
    /// Attempts before it is given up, and the first retry's delay (ms; doubled each retry,
    /// with jitter).
    pub attempts_max: i64,
    pub backoff_ms: i64,
}

/// The change [`Store::write_with_callback`] makes to a row.
#[derive(Debug, Clone, Copy)]
pub enum RowWrite<'a> {
    Insert(&'a [(&'a str, Value)]),
    Update {
        account: &'a str,
        sid: &'a str,
        sets: &'a [(&'a str, Value)],
    },
}

/// The change [`Store::write_call`] makes to a call's row.
#[derive(Debug, Clone, Copy)]
pub enum CallWrite<'a> {
    /// A new call record (columns of [`CALLS`] plus `sid` and `account_sid`).
    Insert(&'a [(&'a str, Value)]),
    /// The call's status moves if it is one of `from` (see [`Store::transition_call`]).
    Transition {
        sid: &'a str,
        from: &'a [&'a str],
        sets: &'a [(&'a str, Value)],
    },
}

/// A condition of a list query.
#[derive(Debug, Clone)]
pub enum Filter {
    Eq(&'static str, Value),
    /// column ≥ value
    Ge(&'static str, i64),
    /// column < value
    Lt(&'static str, i64),
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    key: SecretKey,
    backend: Backend,
}

/// Marks SQL built at run time as audited: only identifiers from the static [`Table`]
/// descriptors, placeholders and keywords are ever interpolated; every value is bound.
fn audited(q: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(q)
}

/// A write's error: a unique column already taken is [`StoreError::Conflict`].
fn write_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(e) if e.is_unique_violation() => {
            StoreError::Conflict(e.message().to_string())
        }
        e => e.into(),
    }
}

fn quoted(c: &str) -> String {
    format!("\"{c}\"")
}

fn bind_value<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    kind: Kind,
    v: &Value,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    match (kind, v) {
        (Kind::Text, Value::Null) => q.bind(None::<String>),
        (Kind::Text, Value::String(s)) => q.bind(s.clone()),
        (Kind::Text, other) => q.bind(other.to_string()),
        (_, Value::Null) => q.bind(None::<i64>),
        (_, Value::Bool(b)) => q.bind(i64::from(*b)),
        (_, Value::Number(n)) => q.bind(n.as_i64().unwrap_or(0)),
        (_, Value::String(s)) => q.bind(s.parse::<i64>().ok()),
        (_, _) => q.bind(None::<i64>),
    }
}

fn decode(table: &Table, row: &AnyRow) -> Result<Map<String, Value>, sqlx::Error> {
    let mut m = Map::new();
    m.insert("sid".into(), Value::String(row.try_get("sid")?));
    m.insert(
        "account_sid".into(),
        Value::String(row.try_get("account_sid")?),
    );
    for (c, k) in table.columns {
        let v = match k {
            Kind::Text => row
                .try_get::<Option<String>, _>(*c)?
                .map_or(Value::Null, Value::String),
            Kind::Int | Kind::IntString | Kind::Time => row
                .try_get::<Option<i64>, _>(*c)?
                .map_or(Value::Null, |n| Value::Number(n.into())),
            Kind::Bool => Value::Bool(row.try_get::<Option<i64>, _>(*c)?.unwrap_or(0) != 0),
        };
        m.insert((*c).to_string(), v);
    }
    Ok(m)
}

fn account_from(row: &AnyRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        sid: row.try_get("sid")?,
        owner_account_sid: row.try_get("owner_account_sid")?,
        friendly_name: row.try_get("friendly_name")?,
        status: row.try_get("status")?,
        kind: row.try_get("type")?,
        auth_token_sealed: row.try_get("auth_token_sealed")?,
        date_created: row.try_get("date_created")?,
        date_updated: row.try_get("date_updated")?,
    })
}

fn key_from(row: &AnyRow) -> Result<ApiKey, sqlx::Error> {
    Ok(ApiKey {
        sid: row.try_get("sid")?,
        account_sid: row.try_get("account_sid")?,
        friendly_name: row.try_get("friendly_name")?,
        secret_sealed: row.try_get("secret_sealed")?,
        date_created: row.try_get("date_created")?,
        date_updated: row.try_get("date_updated")?,
    })
}

const ACCOUNT_COLUMNS: &str =
    "sid, owner_account_sid, friendly_name, status, type, auth_token_sealed, date_created, date_updated";

impl Store {
    /// Connects (creating a SQLite file when missing) and applies the migrations.
    ///
    /// # Errors
    /// The database cannot be reached or a migration fails.
    pub async fn connect(url: &str, key: SecretKey) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') && !url.contains(":memory:") => {
                format!("{url}?mode=rwc")
            }
            _ => url.to_string(),
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(10));
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        if backend == Backend::Sqlite {
            // WAL: readers do not wait for the writer; durable at commit with synchronous=NORMAL
            // except for the last transactions before a power loss (not a process crash).
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let store = Store { pool, key, backend };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // Control nodes starting together: one applies, the others wait and see it done
            // (the lock comes first: concurrent CREATE TABLE IF NOT EXISTS can collide).
            sqlx::query("SELECT pg_advisory_xact_lock(725384)")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS voxedge_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let done: Vec<i64> = sqlx::query("SELECT version FROM voxedge_migrations")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<_, _>>()?;
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            // Comment lines go first (they may contain ';'), then one statement at a time.
            let text: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            for stmt in text.split(';').filter(|s| !s.trim().is_empty()) {
                sqlx::query(audited(stmt.to_string()))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO voxedge_migrations (version, applied) VALUES ($1, $2)")
                .bind(*version)
                .bind(now_us())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "store migration applied");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates an account (a subaccount when `owner` is set) and returns it with its auth token.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_account(
        &self,
        friendly_name: &str,
        owner: Option<&str>,
    ) -> Result<(Account, String), StoreError> {
        let token = secret::new_token();
        let now = now_us();
        let a = Account {
            sid: secret::new_sid("AC"),
            owner_account_sid: owner.map(str::to_string),
            friendly_name: friendly_name.to_string(),
            status: "active".into(),
            kind: "Full".into(),
            auth_token_sealed: self.key.seal(&token),
            date_created: now,
            date_updated: now,
        };
        sqlx::query(
            "INSERT INTO accounts (sid, owner_account_sid, friendly_name, status, type, auth_token_sealed, date_created, date_updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(a.sid.clone())
        .bind(a.owner_account_sid.clone())
        .bind(a.friendly_name.clone())
        .bind(a.status.clone())
        .bind(a.kind.clone())
        .bind(a.auth_token_sealed.clone())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((a, token))
    }

    /// An account by SID.
    ///
    /// # Errors
    /// Database errors.
    pub async fn account(&self, sid: &str) -> Result<Option<Account>, StoreError> {
        let q = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE sid = $1");
        let row = sqlx::query(audited(q))
            .bind(sid.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(account_from).transpose()?)
    }

    /// Every account, oldest first (operator listing).
    ///
    /// # Errors
    /// Database errors.
    pub async fn all_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let q = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY date_created, sid");
        let rows = sqlx::query(audited(q)).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(account_from).collect::<Result<_, _>>()?)
    }

    /// The plain auth token of an account (for authentication and signing).
    ///
    /// # Errors
    /// The sealed token does not open with the configured key.
    pub fn auth_token(&self, a: &Account) -> Result<String, StoreError> {
        Ok(self.key.open(&a.auth_token_sealed)?)
    }

    /// `principal` itself and its subaccounts, newest first, optionally filtered.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_accounts(
        &self,
        principal: &str,
        friendly_name: Option<&str>,
        status: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Account>, bool), StoreError> {
        let mut q = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE (sid = $1 OR owner_account_sid = $1)"
        );
        let mut n = 1;
        if friendly_name.is_some() {
            n += 1;
            q.push_str(&format!(" AND friendly_name = ${n}"));
        }
        if status.is_some() {
            n += 1;
            q.push_str(&format!(" AND status = ${n}"));
        }
        q.push_str(&format!(
            " ORDER BY date_created DESC, sid DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        ));
        let mut query = sqlx::query(audited(q)).bind(principal.to_string());
        if let Some(f) = friendly_name {
            query = query.bind(f.to_string());
        }
        if let Some(s) = status {
            query = query.bind(s.to_string());
        }
        let rows = query
            .bind(limit + 1)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<Account> = rows.iter().map(account_from).collect::<Result<_, _>>()?;
        let more = out.len() as i64 > limit;
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok((out, more))
    }

    /// Changes an account's friendly name and/or status.
    ///
    /// # Errors
    /// Database errors.
    pub async fn update_account(
        &self,
        sid: &str,
        friendly_name: Option<&str>,
        status: Option<&str>,
    ) -> Result<(), StoreError> {
        if friendly_name.is_none() && status.is_none() {
            return Ok(());
        }
        // One statement: a change the caller did not ask for keeps the stored value.
        sqlx::query(
            "UPDATE accounts SET friendly_name = COALESCE($1, friendly_name), status = COALESCE($2, status), date_updated = $3 WHERE sid = $4",
        )
        .bind(friendly_name.map(str::to_string))
        .bind(status.map(str::to_string))
        .bind(now_us())
        .bind(sid.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates an API key of an account; returns it with its secret (shown once).
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_key(
        &self,
        account: &str,
        friendly_name: &str,
    ) -> Result<(ApiKey, String), StoreError> {
        let secret = secret::new_token();
        let now = now_us();
        let k = ApiKey {
            sid: secret::new_sid("SK"),
            account_sid: account.to_string(),
            friendly_name: friendly_name.to_string(),
            secret_sealed: self.key.seal(&secret),
            date_created: now,
            date_updated: now,
        };
        sqlx::query(
            "INSERT INTO api_keys (sid, account_sid, friendly_name, secret_sealed, date_created, date_updated) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(k.sid.clone())
        .bind(k.account_sid.clone())
        .bind(k.friendly_name.clone())
        .bind(k.secret_sealed.clone())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((k, secret))
    }

    /// An API key by SID.
    ///
    /// # Errors
    /// Database errors.
    pub async fn key_by_sid(&self, sid: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(
            "SELECT sid, account_sid, friendly_name, secret_sealed, date_created, date_updated FROM api_keys WHERE sid = $1",
        )
        .bind(sid.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(key_from).transpose()?)
    }

    /// The keys of an account, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_keys(
        &self,
        account: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ApiKey>, bool), StoreError> {
        let rows = sqlx::query(
            "SELECT sid, account_sid, friendly_name, secret_sealed, date_created, date_updated FROM api_keys WHERE account_sid = $1 ORDER BY date_created DESC, sid DESC LIMIT $2 OFFSET $3",
        )
        .bind(account.to_string())
        .bind(limit + 1)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<ApiKey> = rows.iter().map(key_from).collect::<Result<_, _>>()?;
        let more = out.len() as i64 > limit;
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok((out, more))
    }

    /// Renames a key.
    ///
    /// # Errors
    /// Database errors.
    pub async fn rename_key(&self, sid: &str, friendly_name: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET friendly_name = $1, date_updated = $2 WHERE sid = $3")
            .bind(friendly_name.to_string())
            .bind(now_us())
            .bind(sid.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a key of an account; false when there is none.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_key(&self, account: &str, sid: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM api_keys WHERE sid = $1 AND account_sid = $2")
            .bind(sid.to_string())
            .bind(account.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Inserts a row; `values` name columns of `table` (plus `sid` and `account_sid`).
    ///
    /// # Errors
    /// Database errors; a unique column already taken is [`StoreError::Conflict`].
    pub async fn insert(&self, table: &Table, values: &[(&str, Value)]) -> Result<(), StoreError> {
        Self::insert_query(table, values, false)
            .execute(&self.pool)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    fn columns(table: &Table) -> String {
        let mut cols = vec!["sid".to_string(), "account_sid".to_string()];
        cols.extend(table.columns.iter().map(|(c, _)| quoted(c)));
        cols.join(", ")
    }

    fn select(table: &Table) -> String {
        format!("SELECT {} FROM {}", Self::columns(table), table.name)
    }

    /// A row of `account` by SID.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get(
        &self,
        table: &Table,
        account: &str,
        sid: &str,
    ) -> Result<Option<Map<String, Value>>, StoreError> {
        let q = format!(
            "{} WHERE sid = $1 AND account_sid = $2",
            Self::select(table)
        );
        let row = sqlx::query(audited(q))
            .bind(sid.to_string())
            .bind(account.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| decode(table, &r)).transpose()?)
    }

    /// A row by SID whatever its account (for the service's own bookkeeping).
    ///
    /// # Errors
    /// Database errors.
    pub async fn get_any(
        &self,
        table: &Table,
        sid: &str,
    ) -> Result<Option<Map<String, Value>>, StoreError> {
        let q = format!("{} WHERE sid = $1", Self::select(table));
        let row = sqlx::query(audited(q))
            .bind(sid.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| decode(table, &r)).transpose()?)
    }

    /// The incoming number `phone` (E.164 as stored), whatever its account: where an incoming
    /// call goes. `phone_number` is unique, so at most one.
    ///
    /// # Errors
    /// Database errors.
    pub async fn number_by_phone(
        &self,
        phone: &str,
    ) -> Result<Option<Map<String, Value>>, StoreError> {
        let q = format!("{} WHERE phone_number = $1", Self::select(&NUMBERS));
        let row = sqlx::query(audited(q))
            .bind(phone.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| decode(&NUMBERS, &r)).transpose()?)
    }

    /// A page of `account`'s rows matching `filters`, ordered by a column (newest or oldest
    /// first, then by SID), and whether more follow. With `after` = (order value, SID) of the
    /// last row of the previous page, the page starts right after it (keyset paging: an index
    /// seek however deep the page); else at `offset`.
    ///
    /// # Errors
    /// Database errors.
    #[allow(clippy::too_many_arguments)]
    pub async fn list(
        &self,
        table: &Table,
        account: &str,
        filters: &[Filter],
        (order, descending): (&str, bool),
        after: Option<(i64, &str)>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Map<String, Value>>, bool), StoreError> {
        let mut q = format!("{} WHERE account_sid = $1", Self::select(table));
        let mut n = 1;
        for f in filters {
            let (c, op) = match f {
                Filter::Eq(c, _) => (c, "="),
                Filter::Ge(c, _) => (c, ">="),
                Filter::Lt(c, _) => (c, "<"),
            };
            n += 1;
            q.push_str(&format!(" AND {} {op} ${n}", quoted(c)));
        }
        if after.is_some() {
            let cmp = if descending { "<" } else { ">" };
            let o = quoted(order);
            q.push_str(&format!(
                " AND ({o} {cmp} ${} OR ({o} = ${} AND sid {cmp} ${}))",
                n + 1,
                n + 2,
                n + 3
            ));
            n += 3;
        }
        let dir = if descending { "DESC" } else { "ASC" };
        q.push_str(&format!(
            " ORDER BY {} {dir}, sid {dir} LIMIT ${} OFFSET ${}",
            quoted(order),
            n + 1,
            n + 2
        ));
        let mut query = sqlx::query(audited(q)).bind(account.to_string());
        for f in filters {
            query = match f {
                Filter::Eq(c, v) => bind_value(query, table.kind(c).unwrap_or(Kind::Text), v),
                Filter::Ge(_, n) | Filter::Lt(_, n) => query.bind(*n),
            };
        }
        if let Some((v, sid)) = after {
            query = query.bind(v).bind(v).bind(sid.to_string());
        }
        let offset = if after.is_some() { 0 } else { offset };
        let rows = query
            .bind(limit + 1)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(|r| decode(table, r))
            .collect::<Result<Vec<_>, _>>()?;
        let more = out.len() as i64 > limit;
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok((out, more))
    }

    /// Sets columns of a row of `account` (and `date_updated` when the table has it); false
    /// when there is no such row.
    ///
    /// # Errors
    /// Database errors; a unique column already taken is [`StoreError::Conflict`].
    pub async fn update(
        &self,
        table: &Table,
        account: &str,
        sid: &str,
        sets: &[(&str, Value)],
    ) -> Result<bool, StoreError> {
        let r = Self::update_query(table, account, sid, sets)
            .execute(&self.pool)
            .await
            .map_err(write_error)?;
        Ok(r.rows_affected() > 0)
    }

    /// A call's state change and the status callback it causes, in **one transaction**: the
    /// row is inserted (or moved if its status is one of `from`) and read back (`RETURNING`);
    /// `then`, given the row, says whether a callback is due — and builds it from how many
    /// status callbacks (`CB…`) the call already has —, which is written to the outbox before
    /// the commit. A crash leaves both or neither. Returns the row as written, or `None` when a
    /// transition found the call in another status (nothing changed).
    ///
    /// # Errors
    /// Database errors; an insert whose SID exists is [`StoreError::Conflict`].
    pub async fn write_call<F>(
        &self,
        write: CallWrite<'_>,
        then: F,
    ) -> Result<Option<Map<String, Value>>, StoreError>
    where
        F: FnOnce(&Map<String, Value>) -> Option<Box<dyn FnOnce(i64) -> Callback + Send>>,
    {
        let mut tx = self.pool.begin().await?;
        let returned = match write {
            CallWrite::Insert(values) => Self::insert_query(&CALLS, values, true)
                .fetch_one(&mut *tx)
                .await
                .map_err(write_error)?,
            CallWrite::Transition { sid, from, sets } => {
                match Self::transition_query(sid, from, sets, true)
                    .fetch_optional(&mut *tx)
                    .await?
                {
                    Some(r) => r,
                    None => {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                }
            }
        };
        let row = decode(&CALLS, &returned)?;
        if let Some(build) = then(&row) {
            let call = row.get("sid").and_then(Value::as_str).unwrap_or_default();
            Self::enqueue_numbered(&mut tx, call, build).await?;
        }
        tx.commit().await?;
        Ok(Some(row))
    }

    /// Writes a status callback of `call` numbered after the ones written before it (its
    /// `SequenceNumber`), on its own: for a change made without the outbox transaction.
    ///
    /// # Errors
    /// Database errors.
    pub async fn enqueue_status_callback(
        &self,
        call: &str,
        build: Box<dyn FnOnce(i64) -> Callback + Send>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::enqueue_numbered(&mut tx, call, build).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_numbered(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        call: &str,
        build: Box<dyn FnOnce(i64) -> Callback + Send>,
    ) -> Result<(), StoreError> {
        let prior: i64 = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM callbacks WHERE call_sid = $1 AND sid LIKE 'CB%'",
        )
        .bind(call.to_string())
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
        Self::enqueue_query(&build(prior))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A resource row written (inserted, or updated by SID) together with the callback the
    /// change causes, in one transaction (recordings and their status callbacks).
    ///
    /// # Errors
    /// Database errors; a unique column already taken is [`StoreError::Conflict`].
    pub async fn write_with_callback(
        &self,
        table: &Table,
        write: RowWrite<'_>,
        callback: Option<&Callback>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        match write {
            RowWrite::Insert(values) => {
                Self::insert_query(table, values, false)
                    .execute(&mut *tx)
                    .await
                    .map_err(write_error)?;
            }
            RowWrite::Update { account, sid, sets } => {
                Self::update_query(table, account, sid, sets)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(cb) = callback {
            Self::enqueue_query(cb).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::transition_call`] returning the row as written (`None`: not moved), for calls
    /// whose change causes no callback (one statement).
    ///
    /// # Errors
    /// Database errors.
    pub async fn transition_returning(
        &self,
        sid: &str,
        from: &[&str],
        sets: &[(&str, Value)],
    ) -> Result<Option<Map<String, Value>>, StoreError> {
        match Self::transition_query(sid, from, sets, true)
            .fetch_optional(&self.pool)
            .await?
        {
            Some(r) => Ok(Some(decode(&CALLS, &r)?)),
            None => Ok(None),
        }
    }

    /// `UPDATE calls … WHERE sid AND status IN from` (`date_updated` set too), optionally
    /// returning the row.
    fn transition_query<'q>(
        sid: &str,
        from: &[&str],
        sets: &[(&str, Value)],
        returning: bool,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        let sets = Self::stamped(&CALLS, sets);
        let states: Vec<String> = (0..from.len())
            .map(|i| format!("${}", sets.len() + 2 + i))
            .collect();
        let mut q = format!(
            "UPDATE calls SET {} WHERE sid = ${} AND status IN ({})",
            Self::assignments(&sets),
            sets.len() + 1,
            states.join(", ")
        );
        if returning {
            q.push_str(" RETURNING ");
            q.push_str(&Self::columns(&CALLS));
        }
        let mut query = Self::bind_sets(sqlx::query(audited(q)), &CALLS, &sets);
        query = query.bind(sid.to_string());
        for f in from {
            query = query.bind((*f).to_string());
        }
        query
    }

    /// `UPDATE table … WHERE sid AND account_sid` (`date_updated` set too, when the table has
    /// it).
    fn update_query<'q>(
        table: &Table,
        account: &str,
        sid: &str,
        sets: &[(&str, Value)],
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        let sets = Self::stamped(table, sets);
        let q = format!(
            "UPDATE {} SET {} WHERE sid = ${} AND account_sid = ${}",
            table.name,
            Self::assignments(&sets),
            sets.len() + 1,
            sets.len() + 2
        );
        Self::bind_sets(sqlx::query(audited(q)), table, &sets)
            .bind(sid.to_string())
            .bind(account.to_string())
    }

    /// `sets` with `date_updated` = now added when the table has that column and `sets` does not
    /// name it already (a column assigned twice is an error on PostgreSQL).
    fn stamped<'a>(table: &Table, sets: &[(&'a str, Value)]) -> Vec<(&'a str, Value)> {
        let mut sets = sets.to_vec();
        if table.kind("date_updated").is_some() && !sets.iter().any(|(c, _)| *c == "date_updated") {
            sets.push(("date_updated", Value::from(now_us())));
        }
        sets
    }

    /// `"a" = $1, "b" = $2, …` for `sets`.
    fn assignments(sets: &[(&str, Value)]) -> String {
        sets.iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{} = ${}", quoted(c), i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Binds the values of `sets`, in order.
    fn bind_sets<'q>(
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
        table: &Table,
        sets: &[(&str, Value)],
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        for (c, v) in sets {
            query = bind_value(query, table.kind(c).unwrap_or(Kind::Text), v);
        }
        query
    }

    /// `INSERT` of `values` into `table`, bound (`RETURNING` every column when asked).
    fn insert_query<'q>(
        table: &Table,
        values: &[(&str, Value)],
        returning: bool,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        let cols: Vec<String> = values.iter().map(|(c, _)| quoted(c)).collect();
        let params: Vec<String> = (1..=values.len()).map(|i| format!("${i}")).collect();
        let mut q = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            cols.join(", "),
            params.join(", ")
        );
        if returning {
            q = format!("{q} RETURNING {}", Self::columns(table));
        }
        let mut query = sqlx::query(audited(q));
        for (c, v) in values {
            query = bind_value(query, table.kind(c).unwrap_or(Kind::Text), v);
        }
        query
    }

    /// Sets the status of a call only if it is currently one of `from` (state changes race
    /// between the API and the signalling; the first one wins). True when it changed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn transition_call(
        &self,
        sid: &str,
        from: &[&str],
        sets: &[(&str, Value)],
    ) -> Result<bool, StoreError> {
        Ok(Self::transition_query(sid, from, sets, false)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    /// Deletes a row of `account`; false when there is none.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete(
        &self,
        table: &Table,
        account: &str,
        sid: &str,
    ) -> Result<bool, StoreError> {
        let q = format!(
            "DELETE FROM {} WHERE sid = $1 AND account_sid = $2",
            table.name
        );
        let r = sqlx::query(audited(q))
            .bind(sid.to_string())
            .bind(account.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes the rows of `account` whose `column` is `value`; how many.
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete_where(
        &self,
        table: &Table,
        account: &str,
        column: &str,
        value: &str,
    ) -> Result<u64, StoreError> {
        if table.kind(column).is_none() {
            return Ok(0);
        }
        let q = format!(
            "DELETE FROM {} WHERE {} = $1 AND account_sid = $2",
            table.name,
            quoted(column)
        );
        let r = sqlx::query(audited(q))
            .bind(value.to_string())
            .bind(account.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Calls of `account` in `[start, end)` by direction: (count, billable minutes).
    ///
    /// # Errors
    /// Database errors.
    pub async fn call_usage(
        &self,
        account: &str,
        direction_prefix: Option<&str>,
        start: i64,
        end: i64,
    ) -> Result<(i64, i64), StoreError> {
        let mut q = "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM((COALESCE(duration, 0) + 59) / 60), 0) AS BIGINT) AS minutes FROM calls WHERE account_sid = $1 AND date_created >= $2 AND date_created < $3".to_string();
        if direction_prefix.is_some() {
            q.push_str(" AND direction LIKE $4");
        }
        let mut query = sqlx::query(audited(q))
            .bind(account.to_string())
            .bind(start)
            .bind(end);
        if let Some(d) = direction_prefix {
            query = query.bind(format!("{d}%"));
        }
        let row = query.fetch_one(&self.pool).await?;
        Ok((row.try_get("n")?, row.try_get("minutes")?))
    }

    /// Adds fetches and call time to a module's usage of `day` (µs at the start of the UTC
    /// day).
    ///
    /// # Errors
    /// Database errors.
    pub async fn meter_module(
        &self,
        account: &str,
        module: &str,
        day: i64,
        fetches: i64,
        call_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO module_usage (account_sid, module, day, fetches, call_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (account_sid, module, day) DO UPDATE SET fetches = module_usage.fetches + excluded.fetches, call_ms = module_usage.call_ms + excluded.call_ms",
        )
        .bind(account.to_string())
        .bind(module.to_string())
        .bind(day)
        .bind(fetches)
        .bind(call_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Usage per module of `account` over days in `[start, end)`: (module, fetches, call ms),
    /// by module.
    ///
    /// # Errors
    /// Database errors.
    pub async fn module_usage(
        &self,
        account: &str,
        start: i64,
        end: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT module, CAST(SUM(fetches) AS BIGINT) AS f, CAST(SUM(call_ms) AS BIGINT) AS ms FROM module_usage \
             WHERE account_sid = $1 AND day >= $2 AND day < $3 GROUP BY module ORDER BY module",
        )
        .bind(account.to_string())
        .bind(start)
        .bind(end)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("module")?, r.try_get("f")?, r.try_get("ms")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Writes a callback to the outbox (before any delivery attempt). `seq` orders the
    /// callbacks of one call.
    ///
    /// # Errors
    /// Database errors.
    pub async fn enqueue_callback(&self, c: &Callback) -> Result<(), StoreError> {
        Self::enqueue_query(c).execute(&self.pool).await?;
        Ok(())
    }

    fn enqueue_query(
        c: &Callback,
    ) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let now = now_us();
        sqlx::query(
            "INSERT INTO callbacks (sid, account_sid, call_sid, seq, url, method, params, status, attempts, next_attempt, last_error, date_created, date_updated, attempts_max, backoff_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, NULL, $9, $10, $11, $12)",
        )
        .bind(c.sid.clone())
        .bind(c.account_sid.clone())
        .bind(c.call_sid.clone())
        .bind(c.seq)
        .bind(c.url.clone())
        .bind(c.method.clone())
        .bind(c.params.clone())
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(c.attempts_max)
        .bind(c.backoff_ms)
    }

    /// Pending callbacks due now, oldest first: for each call only its first pending one (so
    /// a call's callbacks leave in order, a later one never overtaking a retried earlier one).
    ///
    /// # Errors
    /// Database errors.
    pub async fn due_callbacks(&self, limit: i64) -> Result<Vec<Callback>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.sid, c.account_sid, c.call_sid, c.seq, c.url, c.method, c.params, c.attempts, c.next_attempt, c.attempts_max, c.backoff_ms FROM callbacks c \
             WHERE c.status = 'pending' AND c.next_attempt <= $1 \
             AND NOT EXISTS (SELECT 1 FROM callbacks e WHERE e.call_sid = c.call_sid AND e.status = 'pending' AND e.seq < c.seq) \
             ORDER BY c.date_created, c.seq LIMIT $2",
        )
        .bind(now_us())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Callback {
                    sid: r.try_get("sid")?,
                    account_sid: r.try_get("account_sid")?,
                    call_sid: r.try_get("call_sid")?,
                    seq: r.try_get("seq")?,
                    url: r.try_get("url")?,
                    method: r.try_get("method")?,
                    params: r.try_get("params")?,
                    attempts: r.try_get("attempts")?,
                    next_attempt: r.try_get("next_attempt")?,
                    // Rows written before the policy existed: the defaults.
                    attempts_max: r
                        .try_get::<Option<i64>, _>("attempts_max")?
                        .unwrap_or(crate::callbacks::ATTEMPTS_MAX),
                    backoff_ms: r
                        .try_get::<Option<i64>, _>("backoff_ms")?
                        .unwrap_or(crate::callbacks::BACKOFF_MS),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Claims a due callback for one delivery attempt: moves its next attempt `lease_us` ahead,
    /// only if nobody (another control node on the same database) claimed it since it was
    /// read. True when this caller got it. A claim left by a crashed node expires with the
    /// lease, and the callback is delivered again (same idempotency token).
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_callback(&self, cb: &Callback, lease_us: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE callbacks SET next_attempt = $1 WHERE sid = $2 AND status = 'pending' AND next_attempt = $3",
        )
        .bind(now_us() + lease_us)
        .bind(cb.sid.clone())
        .bind(cb.next_attempt)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records the outcome of a delivery attempt: `delivered`, `pending` again at
    /// `next_attempt`, or `failed` for good.
    ///
    /// # Errors
    /// Database errors.
    pub async fn callback_attempted(
        &self,
        sid: &str,
        status: &str,
        next_attempt: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE callbacks SET status = $1, attempts = attempts + 1, next_attempt = $2, last_error = $3, date_updated = $4 WHERE sid = $5",
        )
        .bind(status.to_string())
        .bind(next_attempt)
        .bind(error.map(str::to_string))
        .bind(now_us())
        .bind(sid.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every row of `table`, all accounts (a service loading its own index at start).
    ///
    /// # Errors
    /// Database errors.
    pub async fn all_rows(&self, table: &Table) -> Result<Vec<Map<String, Value>>, StoreError> {
        let rows = sqlx::query(audited(Self::select(table)))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| decode(table, r))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// The rows of `table` whose `status` is one of `statuses`, oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub async fn rows_in(
        &self,
        table: &Table,
        statuses: &[&str],
    ) -> Result<Vec<Map<String, Value>>, StoreError> {
        let states: Vec<String> = (1..=statuses.len()).map(|i| format!("${i}")).collect();
        let q = format!(
            "{} WHERE status IN ({}) ORDER BY date_created",
            Self::select(table),
            states.join(", ")
        );
        let mut query = sqlx::query(audited(q));
        for s in statuses {
            query = query.bind((*s).to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| decode(table, r))
            .collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc2822(1_282_162_806 * 1_000_000),
            "Wed, 18 Aug 2010 20:20:06 +0000"
        );
        assert_eq!(
            rfc2822(951_782_400 * 1_000_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(parse_date("2010-08-18"), Some(1_282_089_600 * 1_000_000));
        assert_eq!(parse_date("2010-8-18"), None);
        assert_eq!(parse_date("2010-13-01"), None);
        assert_eq!(parse_date("x"), None);
        for d in [0i64, 11_016, 19_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
