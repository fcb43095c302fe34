-- Usage per module: every document URL (scheme, host and path; "inline" for Twiml given
-- through the API) a call fetched or ran, per account and day: how many fetches it took and
-- how long calls spent running its instructions. Written when a call's instructions end.
CREATE TABLE module_usage (
    account_sid TEXT NOT NULL,
    module TEXT NOT NULL,
    day BIGINT NOT NULL,
    fetches BIGINT NOT NULL,
    call_ms BIGINT NOT NULL,
    PRIMARY KEY (account_sid, module, day)
)
