#!/usr/bin/env python3
"""VoxEdge compatibility test driven by the official `twilio` Python helper library.

Usage:
  python3 helper_lib_test.py --base http://127.0.0.1:PORT --account SID:TOKEN \
      --other SID:TOKEN --to sip:uas@127.0.0.1:PORT --from +15550001111

Prints one "ok: ..." / "FAIL: ..." line per check; exits 1 if any check failed.
"""
import argparse
import json
import os
import signal
import sys
import time
import warnings

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

warnings.simplefilter("ignore", DeprecationWarning)

TERMINAL = {"completed", "busy", "failed", "no-answer", "canceled"}
FAILURES = []


def ok(msg):
    print("ok: " + msg, flush=True)


def fail(msg):
    FAILURES.append(msg)
    print("FAIL: " + msg, flush=True)


def check(cond, msg, detail=""):
    if cond:
        ok(msg)
    else:
        fail(msg + (" (" + detail + ")" if detail else ""))
    return cond


def make_client(base, sid, token):
    http = TwilioHttpClient(timeout=10)
    http.session.trust_env = False  # never route 127.0.0.1 through an env proxy
    client = Client(sid, token, http_client=http)
    client.edge = client.region = None  # TWILIO_EDGE/REGION would rewrite the host
    client.api.base_url = base.rstrip("/")
    return client


def err_info(exc):
    """(http status, twilio code, class name) for any error the library raises.
    fetch/create/update/delete raise TwilioRestException; list()/page() raise a
    plain TwilioException("Unable to fetch page", Response) instead."""
    name = type(exc).__name__
    if hasattr(exc, "status") and hasattr(exc, "code"):
        return exc.status, exc.code, name
    if isinstance(exc, TwilioException) and len(exc.args) >= 2 and hasattr(exc.args[1], "status_code"):
        resp = exc.args[1]
        try:
            code = json.loads(resp.text).get("code")
        except Exception:
            code = None
        return resp.status_code, code, name
    return None, None, "%s: %s" % (name, exc)


def attempt(label, fn):
    """Run fn; return its result, or None after recording a failure."""
    try:
        return fn()
    except Exception as e:
        status, code, name = err_info(e)
        fail("%s raised %s (status=%s code=%s)" % (label, name, status, code))
        return None


def expect_error(label, fn, statuses=(404,), rest_exc=True, want_code=None):
    try:
        fn()
    except Exception as e:
        status, code, name = err_info(e)
        good = (status in statuses and (not rest_exc or isinstance(e, TwilioRestException))
                and want_code in (None, code))
        check(good, "%s -> %s %s (code %s)" % (label, name, status, code), "expected %s with status in %s%s" % (
            "TwilioRestException" if rest_exc else "an error", statuses, " and code %s" % want_code if want_code else ""))
        return status
    fail("%s unexpectedly succeeded (expected %s)" % (label, statuses))
    return None


def sids(lister, **kw):
    return {r.sid for r in lister.list(limit=1000, **kw)}


def poll_status(client, sid, want, timeout=20.0):
    deadline, status = time.time() + timeout, None
    while time.time() < deadline:
        status = client.calls(sid).fetch().status
        if status == want or (status in TERMINAL and want not in TERMINAL):
            break
        time.sleep(0.2)
    return status


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="e.g. http://127.0.0.1:8080")
    ap.add_argument("--account", required=True, help="SID:TOKEN of account 1")
    ap.add_argument("--other", required=True, help="SID:TOKEN of account 2 (another tenant)")
    ap.add_argument("--to", required=True, help="call destination, e.g. sip:uas@127.0.0.1:5070")
    ap.add_argument("--from", dest="from_", metavar="FROM", required=True, help="caller id / number to provision")
    ap.add_argument("--url", default="http://example.com/twiml", help="TwiML URL for calls.create")
    ap.add_argument("--redirect-url", default="http://example.com/other", help="TwiML URL for the redirect")
    ap.add_argument("--deadline", type=float, default=180, help="global watchdog in seconds")
    args = ap.parse_args()

    def watchdog(*_):
        print("FAIL: global deadline of %ss exceeded" % args.deadline, flush=True)
        os._exit(1)
    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(int(args.deadline))

    sid1, tok1 = args.account.split(":", 1)
    sid2, tok2 = args.other.split(":", 1)
    c1 = make_client(args.base, sid1, tok1)
    c2 = make_client(args.base, sid2, tok2)

    # ---- account 1: application ------------------------------------------------
    app = attempt("applications.create", lambda: c1.applications.create(
        friendly_name="helper-lib-test", voice_url="http://127.0.0.1:9/voice", voice_method="POST"))
    if app is None:
        return
    app_sid = app.sid
    check(bool(app_sid) and app_sid.startswith("AP"), "applications.create sid=%s" % app_sid)
    got = attempt("applications(sid).fetch", lambda: c1.applications(app_sid).fetch())
    if got:
        check(got.sid == app_sid and got.voice_url == "http://127.0.0.1:9/voice",
              "applications(sid).fetch returns same sid and voice_url", "got %s %s" % (got.sid, got.voice_url))
    check(app_sid in (attempt("applications.list", lambda: sids(c1.applications)) or ()),
          "applications.list contains the application")

    # ---- account 1: incoming phone number --------------------------------------
    num = attempt("incoming_phone_numbers.create", lambda: c1.incoming_phone_numbers.create(
        phone_number=args.from_, voice_application_sid=app_sid))
    pn_sid = num.sid if num else None
    if num:
        check(bool(pn_sid) and pn_sid.startswith("PN") and num.phone_number == args.from_
              and num.voice_application_sid == app_sid, "incoming_phone_numbers.create sid=%s" % pn_sid,
              "phone_number=%s voice_application_sid=%s" % (num.phone_number, num.voice_application_sid))
        check(pn_sid in (attempt("incoming_phone_numbers.list", lambda: sids(c1.incoming_phone_numbers)) or ()),
              "incoming_phone_numbers.list contains the number")

    # ---- account 1: call lifecycle ---------------------------------------------
    call = attempt("calls.create", lambda: c1.calls.create(to=args.to, from_=args.from_, url=args.url))
    call_sid = call.sid if call else None
    if call:
        check(bool(call_sid) and call_sid.startswith("CA") and call.to == args.to,
              "calls.create sid=%s status=%s" % (call_sid, call.status), "to=%s" % call.to)
        status = attempt("poll fetch", lambda: poll_status(c1, call_sid, "in-progress"))
        check(status == "in-progress", "call reached in-progress", "last status %s" % status)
        check(call_sid in (attempt("calls.list", lambda: sids(c1.calls)) or ()), "calls.list contains the call")
        red = attempt("calls(sid).update(url=)", lambda: c1.calls(call_sid).update(url=args.redirect_url))
        check(red is not None and red.sid == call_sid, "calls(sid).update(url=...) redirect accepted")
        got = attempt("fetch after redirect", lambda: c1.calls(call_sid).fetch())
        check(got is not None and got.status == "in-progress", "fetch after redirect: in-progress",
              "status %s" % (got.status if got else None))
        hang = attempt("calls(sid).update(status=completed)",
                       lambda: c1.calls(call_sid).update(status="completed"))
        check(hang is not None, "calls(sid).update(status='completed') accepted")
        status = attempt("poll fetch", lambda: poll_status(c1, call_sid, "completed"))
        check(status == "completed", "call reached completed", "last status %s" % status)
        got = attempt("fetch completed call", lambda: c1.calls(call_sid).fetch())
        if got:
            d = got.duration
            check(isinstance(d, str) and d.isdigit(), "duration is a string of an integer >= 0",
                  "duration=%r" % (d,))
            check(got.end_time is not None, "end_time is set", "missing, or not an RFC 2822 date")
        recs = attempt("calls.list(to=, status=completed)",
                       lambda: list(c1.calls.list(to=args.to, status="completed", limit=1000)))
        if recs is not None:
            check(call_sid in {r.sid for r in recs}, "calls.list(to=..., status='completed') contains the call")
            bad = [r.sid for r in recs if r.status != "completed" or r.to != args.to]
            check(not bad, "calls.list filter returns only matching calls", "mismatching: %s" % bad[:5])
        if hasattr(c1.calls(call_sid), "events"):
            ev = attempt("calls(sid).events.list", lambda: c1.calls(call_sid).events.list(limit=100))
            if ev is not None:
                ok("calls(sid).events.list returned %d events" % len(ev))

    for name, lister in (("notifications", c1.notifications), ("recordings", c1.recordings),
                         ("usage.records", c1.usage.records)):
        got = attempt(name + ".list", lambda: lister.list(limit=50))
        if got is not None:
            ok("%s.list returned %d records" % (name, len(got)))

    # ---- paging: walk calls page by page, page_size=1 (bounded) ----------------
    def walk():
        page, pages, seen, urls = c1.calls.page(page_size=1), 0, [], set()
        while page is not None and pages < 500:
            recs = list(page)
            pages += 1
            if len(recs) > 1:
                raise AssertionError("page %d has %d records with PageSize=1" % (pages, len(recs)))
            seen += [r.sid for r in recs]
            raw = page._payload.get("next_page_uri")  # the library appends it to base_url
            if raw and not raw.startswith("/2010-04-01/"):
                raise AssertionError("next_page_uri must be a path under /2010-04-01/, got %r" % raw)
            url = page.next_page_url
            if url in urls:
                raise AssertionError("next_page_uri repeats: %s" % url)
            urls.add(url)
            page = page.next_page() if url else None
        return pages, seen, page is None
    walked = attempt("calls.page(page_size=1) walk", walk)
    if walked:
        pages, seen, done = walked
        check(len(seen) >= 1 and len(seen) == len(set(seen)),
              "calls paging with PageSize=1: %d pages, %d records, no duplicates" % (pages, len(seen)))
        if done and call_sid:
            check(call_sid in seen, "paged walk contains the call")
    got = attempt("calls.list(page_size=1, limit=3)", lambda: c1.calls.list(page_size=1, limit=3))
    if got is not None:
        check(1 <= len(got) <= 3, "calls.list(page_size=1, limit=3) returned %d" % len(got))

    # ---- account 2 must not see account 1's resources --------------------------
    targets = [("application", app_sid, c2.applications, lambda x: x.update(friendly_name="x")),
               ("number", pn_sid, c2.incoming_phone_numbers, lambda x: x.update(friendly_name="x")),
               ("call", call_sid, c2.calls, lambda x: x.update(status="completed"))]
    for kind, sid, lister, upd in targets:
        if not sid:
            continue
        expect_error("other tenant fetch %s %s" % (kind, sid), lambda: lister(sid).fetch())
        expect_error("other tenant update %s" % kind, lambda: upd(lister(sid)))
        expect_error("other tenant delete %s" % kind, lambda: lister(sid).delete())
        listed = attempt("other tenant %s list" % kind, lambda: sids(lister))
        if listed is not None:
            check(sid not in listed, "other tenant list does not contain the %s" % kind)
    acct1 = c2.api.v2010.accounts(sid1)
    expect_error("other tenant fetch account 1", lambda: acct1.fetch())
    expect_error("other tenant update account 1", lambda: acct1.update(friendly_name="x"))
    listed = attempt("other tenant accounts.list", lambda: sids(c2.api.v2010.accounts))
    if listed is not None:
        check(sid1 not in listed, "other tenant accounts.list does not contain account 1")
    st = expect_error("other tenant calls.list under account 1's path",
                      lambda: acct1.calls.list(limit=5), (401, 403, 404), rest_exc=False)
    print("info: cross-account list path answered %s" % st)
    if call_sid:
        st = expect_error("other tenant call fetch under account 1's path",
                          lambda: acct1.calls(call_sid).fetch(), (401, 403, 404))
        print("info: cross-account fetch path answered %s" % st)

    # ---- wrong token ------------------------------------------------------------
    bad = make_client(args.base, sid1, "wrong")
    # list() raises a plain TwilioException carrying the Response, so rest_exc=False here
    expect_error("wrong token calls.list", lambda: bad.calls.list(limit=1), (401,), False, 20003)
    expect_error("wrong token accounts(sid).fetch", lambda: bad.api.v2010.accounts(sid1).fetch(), (401,), True, 20003)

    # ---- cleanup by account 1 (keeps re-runs possible) -------------------------
    if pn_sid:
        check(attempt("number delete", lambda: c1.incoming_phone_numbers(pn_sid).delete()) is True,
              "account 1 deletes its number")
        expect_error("fetch deleted number", lambda: c1.incoming_phone_numbers(pn_sid).fetch())
    check(attempt("application delete", lambda: c1.applications(app_sid).delete()) is True,
          "account 1 deletes its application")
    expect_error("fetch deleted application", lambda: c1.applications(app_sid).fetch())


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a bug in the script itself, or the server died
        fail("unexpected %s: %s" % (type(e).__name__, e))
    print("%d failure(s)" % len(FAILURES))
    sys.exit(1 if FAILURES else 0)
