-- The callback outbox: every status callback is written here (durable) before delivery is
-- attempted, delivered in order per call with retries, and kept with its outcome.
CREATE TABLE callbacks (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    call_sid TEXT NOT NULL,
    seq BIGINT NOT NULL,
    url TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    last_error TEXT,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX callbacks_due ON callbacks (status, next_attempt);
CREATE INDEX callbacks_call ON callbacks (call_sid, seq)
