-- The media cache's index: one row per cached source (a URL, or a <Say> text with its voice)
-- of an account, naming the content-addressed files that hold its prepared audio and what
-- the origin said about freshness. The files live in [media] dir; rows whose files are gone
-- are dropped at start.
CREATE TABLE media_cache (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    source_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    url TEXT,
    text TEXT,
    voice TEXT,
    content_sha256 TEXT NOT NULL,
    content_type TEXT,
    bytes BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    etag TEXT,
    last_modified TEXT,
    expires BIGINT NOT NULL,
    must_revalidate BIGINT NOT NULL,
    hits BIGINT NOT NULL,
    date_last_used BIGINT NOT NULL,
    date_fetched BIGINT NOT NULL,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE UNIQUE INDEX media_cache_source ON media_cache (account_sid, source_key);
CREATE INDEX media_cache_list ON media_cache (account_sid, date_created)
