-- Conferences (<Dial><Conference>): one row per room from its first participant to its end.
CREATE TABLE conferences (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    friendly_name TEXT NOT NULL,
    status TEXT NOT NULL,
    region TEXT,
    api_version TEXT NOT NULL,
    reason_conference_ended TEXT,
    call_sid_ending_conference TEXT,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX conferences_account ON conferences (account_sid, date_created);
-- The participants in a conference now (a row leaves with its participant, as Twilio lists
-- only those present). Keyed by the participant's call SID: a call is in one room at a time.
CREATE TABLE conference_participants (
    sid TEXT PRIMARY KEY,
    account_sid TEXT NOT NULL,
    conference_sid TEXT NOT NULL,
    call_sid TEXT NOT NULL,
    label TEXT,
    call_sid_to_coach TEXT,
    coaching BIGINT NOT NULL,
    muted BIGINT NOT NULL,
    hold BIGINT NOT NULL,
    start_conference_on_enter BIGINT NOT NULL,
    end_conference_on_exit BIGINT NOT NULL,
    status TEXT NOT NULL,
    api_version TEXT NOT NULL,
    date_created BIGINT NOT NULL,
    date_updated BIGINT NOT NULL
);
CREATE INDEX conference_participants_conference ON conference_participants (conference_sid, date_created);
