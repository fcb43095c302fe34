-- Per-application defaults for instruction fetches (timeouts, retries), in Twilio's
-- URL-fragment syntax, so applications need not append overrides to every URL.
ALTER TABLE applications ADD COLUMN voice_fetch_overrides TEXT;
