-- Callback retry policy per application (VoxEdge): attempts and the first retry's delay,
-- copied to the calls that run the application and to each callback row when it is written,
-- so a callback keeps the policy it was written under.
ALTER TABLE applications ADD COLUMN callback_attempts BIGINT;
ALTER TABLE applications ADD COLUMN callback_backoff_ms BIGINT;
ALTER TABLE calls ADD COLUMN callback_attempts BIGINT;
ALTER TABLE calls ADD COLUMN callback_backoff_ms BIGINT;
ALTER TABLE callbacks ADD COLUMN attempts_max BIGINT;
ALTER TABLE callbacks ADD COLUMN backoff_ms BIGINT;
