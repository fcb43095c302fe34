-- SIP-event callbacks: a registration of an application (for its calls) or of one call (set
-- at creation or through /v1/): where to send which signalling events, with which headers,
-- optionally only when a header matches.
ALTER TABLE applications ADD COLUMN sip_events_url TEXT;
ALTER TABLE applications ADD COLUMN sip_events_method TEXT;
ALTER TABLE applications ADD COLUMN sip_events TEXT;
ALTER TABLE applications ADD COLUMN sip_events_headers TEXT;
ALTER TABLE applications ADD COLUMN sip_events_filter TEXT;
ALTER TABLE calls ADD COLUMN sip_events_url TEXT;
ALTER TABLE calls ADD COLUMN sip_events_method TEXT;
ALTER TABLE calls ADD COLUMN sip_events TEXT;
ALTER TABLE calls ADD COLUMN sip_events_headers TEXT;
ALTER TABLE calls ADD COLUMN sip_events_filter TEXT;
