-- Lists are ordered by (date_created, sid) within an account: index exactly that, so a page is
-- read in index order instead of sorting the account's rows (measured with voxedge bench rest).
DROP INDEX applications_account;
CREATE INDEX applications_account_order ON applications (account_sid, date_created, sid);
DROP INDEX incoming_phone_numbers_account;
CREATE INDEX incoming_phone_numbers_account_order ON incoming_phone_numbers (account_sid, date_created, sid);
DROP INDEX calls_account;
CREATE INDEX calls_account_order ON calls (account_sid, date_created, sid);
DROP INDEX call_events_call;
CREATE INDEX call_events_call_order ON call_events (call_sid, date_created, sid);
DROP INDEX notifications_account;
CREATE INDEX notifications_account_order ON notifications (account_sid, date_created, sid);
DROP INDEX recordings_account;
CREATE INDEX recordings_account_order ON recordings (account_sid, date_created, sid);
CREATE INDEX accounts_order ON accounts (date_created, sid)
