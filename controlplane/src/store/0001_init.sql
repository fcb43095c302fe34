-- VoxEdge store, version 1. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are microseconds since the Unix epoch (BIGINT); booleans are 0/1 BIGINT.
CREATE TABLE accounts (
    sid TEXT PRIMARY KEY,
    owner_account_sid TEXT,
    friendly_name TEXT NOT NULL,
    status TEXT NOT NULL,
    type TEXT NOT NULL,
    auth_token_sealed TEXT NOT NULL,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX accounts_owner ON accounts (owner_account_sid);
CREATE TABLE api_keys (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    friendly_name TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX api_keys_account ON api_keys (account_sid);
CREATE TABLE applications (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    friendly_name TEXT,
    api_version TEXT NOT NULL,
    voice_url TEXT,
    voice_method TEXT NOT NULL,
    voice_fallback_url TEXT,
    voice_fallback_method TEXT NOT NULL,
    status_callback TEXT,
    status_callback_method TEXT NOT NULL,
    voice_caller_id_lookup BIGINT NOT NULL,
    public_application_connect_enabled BIGINT NOT NULL,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX applications_account ON applications (account_sid, date_created);
CREATE TABLE incoming_phone_numbers (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    phone_number TEXT NOT NULL UNIQUE,
    friendly_name TEXT,
    api_version TEXT NOT NULL,
    voice_application_sid TEXT,
    voice_url TEXT,
    voice_method TEXT NOT NULL,
    voice_fallback_url TEXT,
    voice_fallback_method TEXT NOT NULL,
    status_callback TEXT,
    status_callback_method TEXT NOT NULL,
    voice_caller_id_lookup BIGINT NOT NULL,
    status TEXT NOT NULL,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX incoming_phone_numbers_account ON incoming_phone_numbers (account_sid, date_created);
CREATE TABLE calls (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    parent_call_sid TEXT,
    application_sid TEXT,
    direction TEXT NOT NULL,
    "from" TEXT NOT NULL,
    "to" TEXT NOT NULL,
    from_formatted TEXT,
    to_formatted TEXT,
    caller_name TEXT,
    forwarded_from TEXT,
    status TEXT NOT NULL,
    url TEXT,
    method TEXT,
    twiml TEXT,
    fallback_url TEXT,
    fallback_method TEXT,
    status_callback TEXT,
    status_callback_method TEXT,
    status_callback_event TEXT,
    timeout BIGINT,
    time_limit BIGINT,
    send_digits TEXT,
    record BIGINT NOT NULL,
    sip_response_code BIGINT,
    queue_time BIGINT NOT NULL,
    start_time BIGINT,
    end_time BIGINT,
    duration BIGINT,
    price TEXT,
    price_unit TEXT NOT NULL,
    api_version TEXT NOT NULL,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX calls_account ON calls (account_sid, date_created);
CREATE INDEX calls_status ON calls (status);
CREATE TABLE call_events (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    call_sid TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    date_created BIGINT NOT NULL
);
CREATE INDEX call_events_call ON call_events (call_sid, date_created);
CREATE TABLE notifications (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    call_sid TEXT,
    api_version TEXT NOT NULL,
    log TEXT NOT NULL,
    error_code TEXT NOT NULL,
    more_info TEXT NOT NULL,
    message_text TEXT NOT NULL,
    message_date BIGINT NOT NULL,
    request_url TEXT,
    request_method TEXT,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX notifications_account ON notifications (account_sid, date_created);
CREATE TABLE recordings (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    call_sid TEXT,
    conference_sid TEXT,
    api_version TEXT NOT NULL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    channels BIGINT NOT NULL,
    duration BIGINT,
    start_time BIGINT,
    media_path TEXT,
    error_code TEXT,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX recordings_account ON recordings (account_sid, date_created);
