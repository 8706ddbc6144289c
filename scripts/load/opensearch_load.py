#!/usr/bin/env python3
"""OpenSearch-shaped load through capture-proxy (Python 3 standard library only).

Sends Elasticsearch/OpenSearch REST traffic -- `_bulk`, `_search`, single-document index and
get, `_count` -- to ONE target URL (normally the capture proxy in front of a cluster) on an
open-loop schedule (`steady`, `ramp` or `burst` request rate), with at most `--connections`
requests in flight, each worker thread holding one keep-alive `http.client` connection.
Latency is measured from each request's *scheduled* time (so a slow target cannot hide its
queueing: no coordinated omission) and from its actual send time. At the end it prints a
report (per operation: counts, errors by kind, achieved rate, p50/p90/p99/p99.9/max), and
with `--json` a machine-readable summary on stdout.

`--check-capture` compares what the proxy saw with what was sent: the proxy's Prometheus
`requests_total` counter (`--admin URL`, read before and after), and/or the `requests` count of
`capture-proxy inspect --traceDirectory DIR --summary --json` (`--trace-dir DIR --proxy-bin
PATH`, run before and after). Both must have grown by between the number of requests that got
a response and the number of requests sent.

Exit status: 0 pass; 1 the error rate exceeded `--max-error-rate` or the capture check failed;
2 bad command line or the setup phase (index creation, preload) failed.

Invariants: traffic goes only to `--url` (plus `--admin` for the metrics scrape); every wait is
bounded (socket timeouts, drain deadline, capture wait); nothing outside the standard library.
See scripts/load/README.md for the flags and examples.
"""

import argparse
import base64
import http.client
import json
import math
import os
import queue
import random
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

# ------------------------------------------------------------------------------- constants

#: Relative width of one latency histogram bucket (1 %): percentiles are exact to within 1 %,
#: memory stays a fixed ~2,300 counters per histogram however long the run.
HIST_GROWTH = 1.01
#: Largest latency the histogram resolves, in microseconds (1 hour); larger values land in the
#: last bucket (the exact maximum is still kept separately).
HIST_MAX_US = 3600e6
HIST_INV_LOG = 1.0 / math.log(HIST_GROWTH)
HIST_BUCKETS = int(math.log(HIST_MAX_US) * HIST_INV_LOG) + 2

#: Seconds the dispatcher does not bother sleeping for: below ~0.5 ms a sleep costs more than
#: the lateness it avoids (the lateness is measured and reported anyway).
MIN_SLEEP_S = 0.0005
#: A request sent this many seconds after its scheduled time counts as "late" in the report
#: (10 ms: well above scheduler jitter, so "late" means the generator or the cap fell behind).
LATE_S = 0.010
#: Seconds between checks of the stop flag while the main thread waits (Ctrl-C latency).
POLL_S = 0.1
#: Extra seconds, beyond one request timeout, that queued requests may still be sent after the
#: schedule ends before they are abandoned (counted as errors of kind `not_sent`).
DRAIN_GRACE_S = 5.0
#: Recently indexed document ids kept for `get` operations (a ring, shared by all workers).
KNOWN_IDS = 10000
#: Size of the pre-generated text the document bodies are cut from, in bytes (1 MiB: slicing
#: it is far cheaper than building random text per document).
TEXT_POOL_BYTES = 1 << 20
#: Bytes of a response body inspected for `"errors":true` in a bulk answer (the flag is
#: near the start of the object, before the per-item array).
BULK_ERRORS_PREFIX = 256
#: Most seconds one `capture-proxy inspect` or one metrics scrape may take.
CHECK_COMMAND_TIMEOUT_S = 120.0
#: Seconds between polls of the capture counters while waiting for them to settle.
CHECK_POLL_S = 0.25

OPS = ("bulk", "search", "index", "get", "count")
DEFAULT_MIX = "index=30,get=20,search=30,count=5,bulk=15"
TAGS = ("red", "green", "blue", "yellow", "black", "white", "orange", "purple", "grey", "pink")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
ERROR_KINDS = ("connect", "timeout", "io", "http_4xx", "http_5xx", "http_other",
               "bulk_item", "backlog", "not_sent")


# ------------------------------------------------------------------------------- histogram

class Hist:
    """Log-bucketed latency histogram (1 % buckets), values in seconds, kept in microseconds."""

    __slots__ = ("counts", "n", "sum_us", "max_us")

    def __init__(self):
        self.counts = [0] * HIST_BUCKETS
        self.n = 0
        self.sum_us = 0.0
        self.max_us = 0.0

    def record(self, seconds):
        us = seconds * 1e6
        if us < 1.0:
            us = 1.0
        i = int(math.log(us) * HIST_INV_LOG)
        if i >= HIST_BUCKETS:
            i = HIST_BUCKETS - 1
        self.counts[i] += 1
        self.n += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other):
        c = self.counts
        for i, v in enumerate(other.counts):
            if v:
                c[i] += v
        self.n += other.n
        self.sum_us += other.sum_us
        if other.max_us > self.max_us:
            self.max_us = other.max_us

    def copy(self):
        h = Hist()
        h.merge(self)
        return h

    def minus(self, earlier):
        """Counts recorded since `earlier` (a copy of this histogram); max is not windowed."""
        h = Hist()
        h.counts = [a - b for a, b in zip(self.counts, earlier.counts)]
        h.n = self.n - earlier.n
        h.sum_us = self.sum_us - earlier.sum_us
        h.max_us = self.max_us
        return h

    def percentile_us(self, p):
        if self.n == 0:
            return 0.0
        rank = max(1, int(math.ceil(p / 100.0 * self.n)))
        seen = 0
        for i, v in enumerate(self.counts):
            seen += v
            if seen >= rank:
                # geometric middle of the bucket, never above the true maximum
                return min(HIST_GROWTH ** (i + 0.5), self.max_us)
        return self.max_us

    def summary_ms(self):
        out = {}
        for p in PERCENTILES:
            out["p" + format(p, "g")] = round(self.percentile_us(p) / 1000.0, 3)
        out["max"] = round(self.max_us / 1000.0, 3)
        out["mean"] = round(self.sum_us / self.n / 1000.0, 3) if self.n else 0.0
        return out


class OpStats:
    """Counters and histograms of one operation type, written by one thread only."""

    __slots__ = ("scheduled", "sent", "completed", "errors", "status", "sched", "service",
                 "docs", "not_found")

    def __init__(self):
        self.scheduled = 0
        self.sent = 0          # connection established and the request started going out
        self.completed = 0     # a whole response was read (any status)
        self.errors = {}       # kind -> count
        self.status = {}       # "2xx" .. -> count
        self.sched = Hist()    # completion - scheduled time
        self.service = Hist()  # completion - send time
        self.docs = 0          # documents indexed with a 2xx answer
        self.not_found = 0     # `get` answered 404 (not an error)

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, o):
        self.scheduled += o.scheduled
        self.sent += o.sent
        self.completed += o.completed
        self.docs += o.docs
        self.not_found += o.not_found
        # list() copies in one step under the GIL: the interval report merges while the
        # owning worker may be adding a key
        for k, v in list(o.errors.items()):
            self.errors[k] = self.errors.get(k, 0) + v
        for k, v in list(o.status.items()):
            self.status[k] = self.status.get(k, 0) + v
        self.sched.merge(o.sched)
        self.service.merge(o.service)

    def n_errors(self):
        return sum(self.errors.values())


class ThreadStats:
    """Everything one thread records: per-op stats, the send lag, connections opened."""

    def __init__(self):
        self.ops = {op: OpStats() for op in OPS}
        self.lag = Hist()   # send time - scheduled time
        self.late = 0       # sends more than LATE_S behind schedule
        self.connects = 0


def merge_stats(parts):
    total = ThreadStats()
    for p in parts:
        for op in OPS:
            total.ops[op].merge(p.ops[op])
        total.lag.merge(p.lag)
        total.late += p.late
        total.connects += p.connects
    return total


# ------------------------------------------------------------------------------- rate shapes

class Steady:
    """`rate` requests per second from t = 0."""

    def __init__(self, rate):
        self.rate = rate

    def time_of(self, i):
        return i / self.rate if self.rate > 0 else None

    def describe(self):
        return "steady %g req/s" % self.rate


class Ramp:
    """Rate changes linearly from `a` to `b` req/s over `duration` s (cumulative count
    N(t) = a t + (b - a) t^2 / 2T; request i is sent when N(t) = i)."""

    def __init__(self, a, b, duration):
        self.a = a
        self.k = (b - a) / (2.0 * duration) if duration > 0 else 0.0
        self.desc = "ramp %g -> %g req/s over %gs" % (a, b, duration)

    def time_of(self, i):
        # root of k t^2 + a t - i = 0, in the form that is stable for k of either sign
        disc = self.a * self.a + 4.0 * self.k * i
        if disc < 0:
            return None          # a falling ramp that reached 0 req/s
        den = self.a + math.sqrt(disc)
        if den <= 0:
            return 0.0 if i == 0 else None
        return 2.0 * i / den

    def describe(self):
        return self.desc


class Burst:
    """Every `period` s: the first `length` s at `burst` req/s, the rest at `base` req/s."""

    def __init__(self, base, burst, length, period):
        self.base, self.burst, self.length, self.period = base, burst, length, period
        self.per_period = burst * length + base * (period - length)

    def time_of(self, i):
        if self.per_period <= 0:
            return None
        k = math.floor(i / self.per_period)
        rem = i - k * self.per_period
        in_burst = self.burst * self.length
        if rem < in_burst:
            return k * self.period + rem / self.burst
        return k * self.period + self.length + (rem - in_burst) / self.base

    def describe(self):
        return "burst base %g req/s, %g req/s for %gs every %gs" % (
            self.base, self.burst, self.length, self.period)


# ------------------------------------------------------------------------------- workload

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "do", "fe", "gu",
             "hi", "jo", "ba", "ce", "ri", "to", "mu")


class Workload:
    """Builds OpenSearch requests. Pure functions of (op, seq, rng) plus the shared id ring."""

    def __init__(self, args, run_id):
        self.args = args
        self.run_id = run_id
        self.prefix = args.url_path_prefix
        self.indices = [args.index_prefix if args.indices == 1 else
                        "%s-%d" % (args.index_prefix, k) for k in range(args.indices)]
        rng = random.Random(args.seed if args.seed is not None else 0)
        self.words = []
        while len(self.words) < 1000:
            w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
            if w not in self.words:
                self.words.append(w)
        parts, size = [], 0
        while size < TEXT_POOL_BYTES:
            w = rng.choice(self.words)
            parts.append(w)
            size += len(w) + 1
        self.pool = " ".join(parts)
        self.known = [None] * KNOWN_IDS
        self.known_n = 0
        self.sizes = args.search_sizes
        self.base_ts = int(time.time())

    # --- ids -------------------------------------------------------------------------------
    def remember(self, index, doc_id):
        # list item assignment and int rebinding are atomic under the GIL; a rare lost
        # update only loses one remembered id
        self.known[self.known_n % KNOWN_IDS] = (index, doc_id)
        self.known_n += 1

    def pick_known(self, rng):
        n = min(self.known_n, KNOWN_IDS)
        if n == 0:
            return None
        return self.known[rng.randrange(n)]

    # --- documents ---------------------------------------------------------------------------
    def doc(self, rng, doc_id):
        d = {
            "id": doc_id,
            "title": " ".join(rng.choice(self.words) for _ in range(rng.randint(3, 6))),
            "tag": rng.choice(TAGS),
            "value": rng.randrange(10000),
            "price": round(rng.uniform(1, 1000), 2),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                time.gmtime(self.base_ts - rng.randrange(30 * 86400))),
            "body": "",
        }
        base = len(json.dumps(d, separators=(",", ":")))
        want = self.args.doc_size - base
        if want > 0:
            start = rng.randrange(len(self.pool) - want) if want < len(self.pool) else 0
            d["body"] = self.pool[start:start + want].strip()
        return json.dumps(d, separators=(",", ":"))

    def path(self, *parts):
        return self.prefix + "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)

    # --- requests ----------------------------------------------------------------------------
    def build(self, op, seq, rng):
        """(method, path, body bytes or None, content type or None, docs, (index, id) or None)"""
        index = rng.choice(self.indices)
        if op == "bulk":
            return self.bulk(index, seq, rng, self.args.docs_per_request)
        if op == "search":
            method = self.args.search_method
            if method == "both":
                method = rng.choice(("GET", "POST"))
            body = json.dumps(self.search_body(rng), separators=(",", ":")).encode()
            return (method, self.path(index, "_search"), body, "application/json", 0, None)
        if op == "index":
            doc_id = "%s-%d" % (self.run_id, seq)
            body = self.doc(rng, doc_id).encode()
            return ("PUT", self.path(index, "_doc", doc_id), body, "application/json", 1,
                    (index, doc_id))
        if op == "get":
            known = self.pick_known(rng)
            if known is None:
                known = (index, "%s-missing-%d" % (self.run_id, seq))
            return ("GET", self.path(known[0], "_doc", known[1]), None, None, 0, None)
        if op == "count":
            if rng.random() < 0.5:
                return ("GET", self.path(index, "_count"), None, None, 0, None)
            body = json.dumps({"query": self.query(rng)}, separators=(",", ":")).encode()
            return ("POST", self.path(index, "_count"), body, "application/json", 0, None)
        raise ValueError(op)

    def bulk(self, index, seq, rng, n):
        lines = []
        for j in range(n):
            doc_id = "%s-%s-%d" % (self.run_id, seq, j)
            lines.append('{"index":{"_id":%s}}' % json.dumps(doc_id))
            lines.append(self.doc(rng, doc_id))
        body = ("\n".join(lines) + "\n").encode()
        # one id of the batch is remembered so `get` also reads bulk-indexed documents
        return ("POST", self.path(index, "_bulk"), body, "application/x-ndjson", n,
                (index, "%s-%s-0" % (self.run_id, seq)))

    def query(self, rng):
        kind = rng.randrange(4)
        if kind == 0:
            return {"match": {"title": rng.choice(self.words)}}
        if kind == 1:
            return {"term": {"tag.keyword": rng.choice(TAGS)}}
        if kind == 2:
            if rng.random() < 0.5:
                lo = rng.randrange(10000)
                return {"range": {"value": {"gte": lo, "lt": lo + rng.randrange(1, 2000)}}}
            return {"range": {"ts": {"gte": "now-%dd" % rng.randint(1, 30)}}}
        return {"bool": {
            "must": [{"match": {"title": rng.choice(self.words)}}],
            "filter": [{"term": {"tag.keyword": rng.choice(TAGS)}},
                       {"range": {"price": {"lte": rng.randrange(100, 1000)}}}],
        }}

    def search_body(self, rng):
        body = {"query": self.query(rng), "size": rng.choice(self.sizes)}
        if rng.random() < self.args.aggs_ratio:
            body["aggs"] = {
                "by_tag": {"terms": {"field": "tag.keyword", "size": 10}},
                "avg_value": {"avg": {"field": "value"}},
            }
        return body

    def index_settings(self):
        return json.dumps({
            "settings": {"number_of_shards": self.args.shards,
                         "number_of_replicas": self.args.replicas},
            "mappings": {"properties": {
                "id": {"type": "keyword"},
                "title": {"type": "text"},
                "tag": {"type": "keyword", "fields": {"keyword": {"type": "keyword"}}},
                "value": {"type": "long"},
                "price": {"type": "double"},
                "ts": {"type": "date"},
                "body": {"type": "text"},
            }},
        }).encode()


# ------------------------------------------------------------------------------- HTTP client

class RequestFailed(Exception):
    """A request that got no whole response; `kind` is one of connect, timeout, io."""

    def __init__(self, kind, detail):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Client:
    """One keep-alive connection to the target, reopened after any failure."""

    def __init__(self, target, stats):
        self.t = target
        self.conn = None
        self.stats = stats
        self.last_error = None

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def _stale(self):
        # An idle keep-alive connection is readable only if the peer closed it (or sent
        # garbage): reopen instead of failing the next request on it.
        try:
            r, _, _ = select.select([self.conn.sock], [], [], 0)
            return bool(r)
        except (OSError, ValueError):
            return True

    def ensure(self):
        if self.conn is not None and self.conn.sock is not None and not self._stale():
            return
        self.close()
        t = self.t
        if t.https:
            c = http.client.HTTPSConnection(t.host, t.port, timeout=t.timeout, context=t.ssl)
        else:
            c = http.client.HTTPConnection(t.host, t.port, timeout=t.timeout)
        try:
            c.connect()
        except OSError as e:
            c.close()
            raise RequestFailed("connect", "%s: %s" % (type(e).__name__, e))
        try:
            # requests go out in one write, but a peer that writes its answer in pieces
            # must not stall us on Nagle + delayed ACK
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.conn = c
        self.stats.connects += 1

    def send(self, method, path, body, ctype, on_sent=None):
        """Sends one request and reads the whole answer: (status, body bytes). Calls
        `on_sent()` once the connection is up and the request is about to go out."""
        self.ensure()
        headers = dict(self.t.headers)
        if ctype:
            headers["Content-Type"] = ctype
        if on_sent:
            on_sent()
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.will_close:
                self.close()
            return resp.status, data
        except (socket.timeout, TimeoutError) as e:
            self.close()
            raise RequestFailed("timeout", "timeout: %s" % e)
        except (http.client.HTTPException, OSError) as e:
            self.close()
            raise RequestFailed("io", "%s: %s" % (type(e).__name__, e))


class Target:
    """Parsed `--url` plus TLS context and the fixed headers."""

    def __init__(self, args):
        u = urllib.parse.urlsplit(args.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("--url must be http://HOST[:PORT] or https://HOST[:PORT]")
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        self.timeout = args.timeout
        self.ssl = None
        if self.https:
            ctx = ssl.create_default_context(cafile=args.cacert)
            if args.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self.ssl = ctx
        self.headers = {"Accept": "application/json", "User-Agent": "opensearch-load/1"}
        user = args.user
        if args.user_env:
            user = os.environ.get(args.user_env)
            if not user:
                raise ValueError("environment variable %s is empty" % args.user_env)
        if u.username is not None:
            user = urllib.parse.unquote(u.username) + ":" + urllib.parse.unquote(u.password or "")
        if user:
            token = base64.b64encode(user.encode()).decode()
            self.headers["Authorization"] = "Basic " + token


# ------------------------------------------------------------------------------- the run

def classify(op, status, body):
    """Error kind of a whole response, or None when it counts as success."""
    if 200 <= status < 300:
        if op == "bulk" and b'"errors":true' in body[:BULK_ERRORS_PREFIX].replace(b" ", b""):
            return "bulk_item"
        return None
    if op == "get" and status == 404:
        return None
    if 400 <= status < 500:
        return "http_4xx"
    if 500 <= status < 600:
        return "http_5xx"
    return "http_other"


class Worker(threading.Thread):
    """Takes scheduled requests from the queue and sends them on its own connection."""

    def __init__(self, idx, q, target, workload, args, abandon):
        super().__init__(name="load-worker-%d" % idx, daemon=True)
        self.q = q
        self.stats = ThreadStats()
        self.client = Client(target, self.stats)
        self.workload = workload
        self.rng = random.Random(None if args.seed is None else args.seed * 1000003 + idx)
        self.abandon = abandon
        self.first_errors = []

    def preconnect(self):
        try:
            self.client.ensure()
        except RequestFailed:
            pass  # the first request will retry and count the failure

    def run(self):
        while True:
            item = self.q.get()
            if item is None:
                break
            sched, op, seq = item
            st = self.stats.ops[op]
            if self.abandon.is_set():
                st.error("not_sent")
                continue
            self.one(st, sched, op, seq)
        self.client.close()

    def one(self, st, sched, op, seq):
        method, path, body, ctype, docs, remember = self.workload.build(op, seq, self.rng)
        sent_at = [0.0]

        def on_sent():
            now = time.perf_counter()
            sent_at[0] = now
            st.sent += 1
            lag = now - sched
            self.stats.lag.record(max(lag, 0.0))
            if lag > LATE_S:
                self.stats.late += 1

        try:
            status, data = self.client.send(method, path, body, ctype, on_sent)
        except RequestFailed as e:
            st.error(e.kind)
            self.note_error(op, method, path, e.detail)
            return
        done = time.perf_counter()
        st.completed += 1
        cls = "%dxx" % (status // 100)
        st.status[cls] = st.status.get(cls, 0) + 1
        st.sched.record(done - sched)
        st.service.record(done - sent_at[0])
        kind = classify(op, status, data)
        if kind:
            st.error(kind)
            self.note_error(op, method, path, "HTTP %d %s" % (status, data[:200]))
        elif op == "get" and status == 404:
            st.not_found += 1
        else:
            st.docs += docs
            if remember:
                self.workload.remember(*remember)

    def note_error(self, op, method, path, detail):
        if len(self.first_errors) < 5:
            self.first_errors.append("%s %s %s: %s" % (op, method, path, detail))


class Run:
    """Dispatcher (the main schedule), workers, interval reports."""

    def __init__(self, args, target, workload, shape, weights, out):
        self.args = args
        self.target = target
        self.workload = workload
        self.shape = shape
        self.weights = weights
        self.out = out
        self.q = queue.Queue()
        self.abandon = threading.Event()
        self.stop = threading.Event()
        self.workers = [Worker(i, self.q, target, workload, args, self.abandon)
                        for i in range(args.connections)]
        self.dstats = ThreadStats()  # the dispatcher's: scheduled counts, backlog drops
        self.t0 = 0.0
        self.schedule_end = 0.0
        self.elapsed = 0.0

    def pick(self, rng):
        ops, cum = self.weights
        x = rng.random() * cum[-1]
        for op, c in zip(ops, cum):
            if x < c:
                return op
        return ops[-1]

    def dispatch(self):
        args = self.args
        rng = random.Random(args.seed)
        i = 0
        while not self.stop.is_set():
            if args.max_requests and i >= args.max_requests:
                break
            t = self.shape.time_of(i)
            if t is None or t >= args.duration:
                break
            at = self.t0 + t
            wait = at - time.perf_counter()
            if wait > MIN_SLEEP_S:
                # sleep in slices so Ctrl-C stops a slow schedule promptly
                while wait > MIN_SLEEP_S and not self.stop.is_set():
                    time.sleep(min(wait, POLL_S))
                    wait = at - time.perf_counter()
            op = self.pick(rng)
            st = self.dstats.ops[op]
            st.scheduled += 1
            if self.q.qsize() >= args.max_backlog:
                st.error("backlog")
            else:
                self.q.put((at, op, i))
            i += 1
        self.schedule_end = time.perf_counter()
        for _ in self.workers:
            self.q.put(None)

    def snapshot(self):
        return merge_stats([self.dstats] + [w.stats for w in self.workers])

    def run(self):
        for w in self.workers:
            w.preconnect()
        for w in self.workers:
            w.start()
        self.t0 = time.perf_counter() + 0.05
        d = threading.Thread(target=self.dispatch, name="load-dispatch", daemon=True)
        d.start()
        interval = self.args.report_interval
        next_report = self.t0 + interval if interval else None
        prev, prev_t = None, self.t0
        deadline = None
        try:
            while True:
                alive = d.is_alive() or any(w.is_alive() for w in self.workers)
                if not alive:
                    break
                now = time.perf_counter()
                if deadline is None and not d.is_alive():
                    deadline = now + self.args.timeout + DRAIN_GRACE_S
                if deadline is not None and now >= deadline and not self.abandon.is_set():
                    self.abandon.set()
                    # drop what is still queued; in-flight requests end by their own timeout
                    hard = now + self.args.timeout + DRAIN_GRACE_S
                    deadline = hard
                elif self.abandon.is_set() and deadline is not None and now >= deadline:
                    print("warning: workers still busy after the drain deadline; reporting "
                          "without them", file=sys.stderr)
                    break
                if next_report and now >= next_report:
                    cur = self.snapshot()
                    self.interval_line(cur, prev, now - prev_t, now - self.t0)
                    prev, prev_t = cur, now
                    next_report += interval
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.stop.set()
            print("interrupted: finishing the requests already scheduled", file=sys.stderr)
            d.join(POLL_S * 20)
            for w in self.workers:
                w.join(self.args.timeout + DRAIN_GRACE_S)
        self.elapsed = time.perf_counter() - self.t0
        return self.snapshot()

    def interval_line(self, cur, prev, dt, elapsed):
        tot = OpStats()
        for op in OPS:
            tot.merge(cur.ops[op])
        done_before = 0
        errs_before = 0
        hist = tot.sched
        if prev is not None:
            ptot = OpStats()
            for op in OPS:
                ptot.merge(prev.ops[op])
            done_before = ptot.completed
            errs_before = ptot.n_errors()
            hist = tot.sched.minus(ptot.sched)
        rate = (tot.completed - done_before) / dt if dt > 0 else 0.0
        print("[%6.1fs] completed %d (+%d, %.1f req/s), errors %d (+%d), in queue %d, "
              "latency p50 %.1f ms p99 %.1f ms" % (
                  elapsed, tot.completed, tot.completed - done_before, rate,
                  tot.n_errors(), tot.n_errors() - errs_before, self.q.qsize(),
                  hist.percentile_us(50) / 1000, hist.percentile_us(99) / 1000),
              file=self.out, flush=True)


# ------------------------------------------------------------------------------- setup

class Setup:
    """Requests sent outside the measured run (index creation, preload, refresh, delete).
    They go through the same URL, so they count in the capture check."""

    def __init__(self, target):
        self.stats = ThreadStats()
        self.client = Client(target, self.stats)
        self.sent = 0
        self.completed = 0

    def request(self, method, path, body=None, ctype=None):
        def on_sent():
            self.sent += 1
        try:
            status, data = self.client.send(method, path, body, ctype, on_sent)
        except RequestFailed as e:
            raise SetupError("%s %s: %s" % (method, path, e.detail))
        self.completed += 1
        return status, data

    def close(self):
        self.client.close()


class SetupError(Exception):
    pass


def do_setup(args, setup, workload, log):
    rng = random.Random(args.seed)
    for index in workload.indices:
        if args.create_index:
            status, data = setup.request("PUT", workload.path(index), workload.index_settings(),
                                         "application/json")
            if status == 400 and b"already_exists" in data:
                log("index %s already exists" % index)
            elif not 200 <= status < 300:
                raise SetupError("PUT /%s: HTTP %d %s" % (index, status, data[:300]))
            else:
                log("created index %s" % index)
        if args.preload:
            left, seq = args.preload, 0
            while left > 0:
                n = min(left, args.docs_per_request)
                _, path, body, ctype, _, known = workload.bulk(index, "pre%d" % seq, rng, n)
                status, data = setup.request("POST", path, body, ctype)
                kind = classify("bulk", status, data)
                if kind:
                    raise SetupError("preload bulk: HTTP %d %s" % (status, data[:300]))
                workload.remember(*known)
                left -= n
                seq += 1
            status, data = setup.request("POST", workload.path(index, "_refresh"))
            if not 200 <= status < 300:
                raise SetupError("refresh: HTTP %d %s" % (status, data[:300]))
            log("preloaded %d documents into %s" % (args.preload, index))


def do_teardown(args, setup, workload, log):
    if not args.delete_index_after:
        return
    for index in workload.indices:
        status, data = setup.request("DELETE", workload.path(index))
        log("deleted index %s: HTTP %d" % (index, status))


# ------------------------------------------------------------------------------- capture check

def scrape_metric(admin, name):
    """Sum of all samples of metric `name` at the admin endpoint's /metrics."""
    u = urllib.parse.urlsplit(admin)
    if u.scheme != "http" or not u.hostname:
        raise ValueError("--admin must be http://HOST:PORT")
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=CHECK_COMMAND_TIMEOUT_S)
    try:
        c.request("GET", (u.path.rstrip("/") or "") + "/metrics")
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
        if r.status != 200:
            raise ValueError("GET /metrics: HTTP %d" % r.status)
    finally:
        c.close()
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                total += float(line.rsplit(None, 1)[-1])
                found = True
            except ValueError:
                pass
    if not found:
        raise ValueError("metric %s not found at %s/metrics" % (name, admin))
    return int(total)


def inspect_summary(proxy_bin, trace_dir):
    """The `"type":"summary"` object of `capture-proxy inspect --summary --json`."""
    p = subprocess.run([proxy_bin, "inspect", "--traceDirectory", trace_dir, "--summary",
                        "--json"], capture_output=True, timeout=CHECK_COMMAND_TIMEOUT_S,
                       check=False)
    for line in p.stdout.decode("utf-8", "replace").splitlines():
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict) and v.get("type") == "summary":
            return v
    raise ValueError("inspect printed no summary (exit %d): %s" % (
        p.returncode, p.stderr.decode("utf-8", "replace")[-500:]))


class CaptureCheck:
    """Before/after readings of the proxy's request counts."""

    def __init__(self, args):
        self.args = args
        self.before_admin = None
        self.before_inspect = None

    def before(self):
        if self.args.admin:
            self.before_admin = scrape_metric(self.args.admin, "requests_total")
        if self.args.trace_dir:
            self.before_inspect = inspect_summary(self.args.proxy_bin, self.args.trace_dir)

    def after(self, lo, hi):
        """Polls until every source grew by lo..hi (+ tolerance) or --capture-wait ends."""
        hi += self.args.capture_tolerance
        deadline = time.monotonic() + self.args.capture_wait
        while True:
            results = []
            if self.args.admin:
                results.append(self.check_admin(lo, hi))
            if self.args.trace_dir:
                results.append(self.check_inspect(lo, hi))
            if all(r["ok"] for r in results) or time.monotonic() >= deadline:
                return results
            time.sleep(CHECK_POLL_S)

    def check_admin(self, lo, hi):
        r = {"source": "admin", "where": self.args.admin, "metric": "requests_total",
             "expected_min": lo, "expected_max": hi}
        try:
            after = scrape_metric(self.args.admin, "requests_total")
        except (OSError, ValueError, http.client.HTTPException) as e:
            r.update(ok=False, error=str(e))
            return r
        delta = after - self.before_admin
        r.update(before=self.before_admin, after=after, delta=delta, ok=lo <= delta <= hi)
        return r

    def check_inspect(self, lo, hi):
        r = {"source": "inspect", "where": self.args.trace_dir, "metric": "requests",
             "expected_min": lo, "expected_max": hi}
        try:
            s = inspect_summary(self.args.proxy_bin, self.args.trace_dir)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            r.update(ok=False, error=str(e))
            return r
        b = self.before_inspect
        delta = s.get("requests", 0) - b.get("requests", 0)
        new_errors = s.get("errors", 0) - b.get("errors", 0)
        r.update(before=b.get("requests", 0), after=s.get("requests", 0), delta=delta,
                 new_problems=new_errors, ok=lo <= delta <= hi and new_errors <= 0)
        if new_errors > 0:
            r["problems"] = s.get("problems", [])[:5]
        return r


# ------------------------------------------------------------------------------- report

def op_json(st, elapsed):
    return {
        "scheduled": st.scheduled,
        "sent": st.sent,
        "completed": st.completed,
        "errors": st.n_errors(),
        "errors_by_kind": dict(sorted(st.errors.items())),
        "status_classes": dict(sorted(st.status.items())),
        "not_found": st.not_found,
        "docs_indexed": st.docs,
        "rps": round(st.completed / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {"from_scheduled": st.sched.summary_ms(),
                       "from_send": st.service.summary_ms()},
    }


def build_summary(args, run, stats, shape, setup, capture, failures):
    elapsed = max(run.elapsed, 1e-9)
    total = OpStats()
    ops = {}
    for op in OPS:
        st = stats.ops[op]
        total.merge(st)
        if st.scheduled:
            ops[op] = op_json(st, elapsed)
    overall = op_json(total, elapsed)
    scheduled = total.scheduled
    return {
        "workload": args.workload,
        "shape": args.shape,
        "shape_detail": shape.describe(),
        "url": args.url,
        "connections": args.connections,
        "duration_s": args.duration,
        "elapsed_s": round(run.elapsed, 3),
        "scheduled": scheduled,
        "sent": total.sent,
        "completed": total.completed,
        "errors": total.n_errors(),
        "error_rate": round(total.n_errors() / scheduled, 6) if scheduled else 0.0,
        "errors_by_kind": overall["errors_by_kind"],
        "status_classes": overall["status_classes"],
        "offered_rps": round(scheduled / args.duration, 2) if args.duration else 0.0,
        "achieved_rps": overall["rps"],
        "docs_indexed": total.docs,
        "connections_opened": stats.connects,
        "send_lag_ms": stats.lag.summary_ms(),
        "sent_late": stats.late,
        "latency_ms": overall["latency_ms"],
        "ops": ops,
        "setup": {"sent": setup.sent, "completed": setup.completed},
        "capture": capture,
        "passed": not failures,
        "failures": failures,
    }


def print_report(s, errors_seen, out):
    w = lambda *a: print(*a, file=out)  # noqa: E731
    w("opensearch_load: workload=%s shape=%s (%s) url=%s connections=%d" % (
        s["workload"], s["shape"], s["shape_detail"], s["url"], s["connections"]))
    w("scheduled %d, sent %d, completed %d, errors %d (%.2f%%) in %.2fs: achieved %.1f req/s "
      "(offered %.1f req/s)" % (s["scheduled"], s["sent"], s["completed"], s["errors"],
                                100 * s["error_rate"], s["elapsed_s"], s["achieved_rps"],
                                s["offered_rps"]))
    if s["docs_indexed"]:
        w("documents indexed: %d" % s["docs_indexed"])
    if s["setup"]["sent"]:
        w("setup requests (not in the tables): sent %d, completed %d" % (
            s["setup"]["sent"], s["setup"]["completed"]))
    lag = s["send_lag_ms"]
    w("send lag behind schedule: p50 %.2f ms, p99 %.2f ms, max %.2f ms; %d sends > %d ms late"
      % (lag["p50"], lag["p99"], lag["max"], s["sent_late"], LATE_S * 1000))
    w("connections opened: %d" % s["connections_opened"])
    w("status classes: %s" % (", ".join("%s=%d" % kv for kv in s["status_classes"].items())
                              or "none"))
    w("errors by kind: %s" % (", ".join("%s=%d" % kv for kv in s["errors_by_kind"].items())
                              or "none"))
    for e in errors_seen:
        w("  e.g. " + e)
    cols = ["p50", "p90", "p99", "p99.9", "max"]
    for key, title in (("from_scheduled", "latency from scheduled time (ms)"),
                       ("from_send", "latency from send time (ms)")):
        w("")
        w("%-8s %8s %8s %8s | %s" % ("op", "done", "errors", "req/s", title))
        w("%-8s %8s %8s %8s | %s" % ("", "", "", "", " ".join("%9s" % c for c in cols)))
        rows = list(s["ops"].items()) + [("all", {
            "completed": s["completed"], "errors": s["errors"], "rps": s["achieved_rps"],
            "latency_ms": s["latency_ms"]})]
        for name, o in rows:
            lat = o["latency_ms"][key]
            w("%-8s %8d %8d %8.1f | %s" % (name, o["completed"], o["errors"], o["rps"],
                                         " ".join("%9.2f" % lat[c] for c in cols)))
    if s["capture"] is not None:
        w("")
        for c in s["capture"]["checks"]:
            if "error" in c:
                w("capture check %s (%s): FAILED: %s" % (c["source"], c["where"], c["error"]))
                continue
            w("capture check %s (%s): %s +%d, expected %d..%d -> %s%s" % (
                c["source"], c["where"], c["metric"], c["delta"], c["expected_min"],
                c["expected_max"], "OK" if c["ok"] else "FAILED",
                (" (%d new inspect problems)" % c["new_problems"])
                if c.get("new_problems", 0) > 0 else ""))
    w("")
    w("PASS" if s["passed"] else "FAIL: " + "; ".join(s["failures"]))


# ------------------------------------------------------------------------------- CLI

def parse_mix(text):
    weights = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, val = part.partition("=")
        name = name.strip()
        if name not in OPS:
            raise ValueError("unknown operation %r in --mix (known: %s)" % (name, ", ".join(OPS)))
        w = float(val)
        if w < 0:
            raise ValueError("negative weight in --mix")
        weights[name] = w
    if not weights or sum(weights.values()) <= 0:
        raise ValueError("--mix has no positive weight")
    return weights


def positive(kind):
    def conv(s):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return v
    return conv


def non_negative(kind):
    def conv(s):
        v = kind(s)
        if v < 0:
            raise argparse.ArgumentTypeError("must be >= 0")
        return v
    return conv


def int_list(s):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("comma-separated integers expected")
    if not v or any(x < 0 for x in v):
        raise argparse.ArgumentTypeError("comma-separated integers >= 0 expected")
    return v


def parser():
    p = argparse.ArgumentParser(
        prog="opensearch_load.py",
        description="Open-loop OpenSearch-shaped load (bulk, search, mixed) against one URL, "
                    "normally capture-proxy, with an optional check that the proxy saw and "
                    "captured every request. See scripts/load/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("target")
    g.add_argument("--url", default="http://127.0.0.1:9200",
                   help="target base URL (the proxy); all traffic goes here only")
    g.add_argument("--user", help="basic auth USER:PASSWORD (visible in ps; see --user-env)")
    g.add_argument("--user-env", metavar="VAR",
                   help="read basic auth USER:PASSWORD from environment variable VAR")
    g.add_argument("--insecure", action="store_true",
                   help="https: do not verify the server certificate or host name")
    g.add_argument("--cacert", help="https: CA bundle (PEM) to verify the server with")
    g.add_argument("--timeout", type=positive(float), default=10.0,
                   help="per-request socket timeout, seconds (connect and each read)")
    g = p.add_argument_group("workload")
    g.add_argument("--workload", choices=("bulk", "search", "mixed"), default="mixed")
    g.add_argument("--mix", default=DEFAULT_MIX,
                   help="mixed: weights of the operations " + ", ".join(OPS))
    g.add_argument("--index-prefix", default="loadtest",
                   help="index name (with --indices N > 1: PREFIX-0 .. PREFIX-N-1)")
    g.add_argument("--indices", type=positive(int), default=1, help="number of indices")
    g.add_argument("--create-index", action="store_true",
                   help="PUT each index (settings + mapping) before the run; an existing "
                        "index is fine")
    g.add_argument("--shards", type=positive(int), default=1, help="--create-index shards")
    g.add_argument("--replicas", type=non_negative(int), default=0,
                   help="--create-index replicas")
    g.add_argument("--preload", type=non_negative(int), default=0, metavar="DOCS",
                   help="bulk-index DOCS documents per index (then _refresh) before the run")
    g.add_argument("--delete-index-after", action="store_true",
                   help="DELETE each index after the run")
    g.add_argument("--docs-per-request", type=positive(int), default=100,
                   help="documents per _bulk request")
    g.add_argument("--doc-size", type=positive(int), default=512,
                   help="approximate size of one document's JSON, bytes")
    g.add_argument("--search-sizes", type=int_list, default=[0, 10, 20],
                   help="search `size` values, one picked at random per search")
    g.add_argument("--aggs-ratio", type=float, default=0.2,
                   help="fraction of searches that carry aggregations")
    g.add_argument("--search-method", choices=("GET", "POST", "both"), default="both",
                   help="HTTP method of _search requests")
    g.add_argument("--seed", type=int, help="random seed (repeatable request sequence)")
    g = p.add_argument_group("rate shape (open loop)")
    g.add_argument("--shape", choices=("steady", "ramp", "burst"), default="steady")
    g.add_argument("--duration", type=positive(float), default=10.0,
                   help="seconds of scheduled requests")
    g.add_argument("--max-requests", type=non_negative(int), default=0,
                   help="stop scheduling after this many requests (0: no limit)")
    g.add_argument("--rate", type=non_negative(float), default=50.0,
                   help="steady: req/s; burst: the base req/s between bursts")
    g.add_argument("--ramp-from", type=non_negative(float), default=10.0, help="ramp: req/s at 0")
    g.add_argument("--ramp-to", type=non_negative(float), default=200.0,
                   help="ramp: req/s at the end")
    g.add_argument("--burst-rate", type=positive(float), default=500.0, help="burst: req/s")
    g.add_argument("--burst-length", type=positive(float), default=1.0,
                   help="burst: seconds of each burst (at the start of each period)")
    g.add_argument("--burst-period", type=positive(float), default=10.0,
                   help="burst: seconds from one burst's start to the next")
    g.add_argument("--connections", type=positive(int), default=8,
                   help="worker threads = keep-alive connections = most requests in flight")
    g.add_argument("--max-backlog", type=positive(int), default=10000,
                   help="scheduled requests waiting for a free connection beyond this are "
                        "not sent (errors of kind backlog)")
    g = p.add_argument_group("report and checks")
    g.add_argument("--report-interval", type=non_negative(float), default=0.0,
                   help="print a progress line every N seconds (0: only at the end)")
    g.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout (the text report "
                        "goes to stderr)")
    g.add_argument("--max-error-rate", type=non_negative(float), default=0.01,
                   help="fail (exit 1) when errors / scheduled exceeds this")
    g.add_argument("--check-capture", action="store_true",
                   help="compare the proxy's request counts with the requests sent "
                        "(needs --admin and/or --trace-dir with --proxy-bin)")
    g.add_argument("--admin", help="the proxy's admin endpoint, e.g. http://127.0.0.1:9901")
    g.add_argument("--trace-dir", help="the proxy's --traceDirectory")
    g.add_argument("--proxy-bin", default="capture-proxy",
                   help="capture-proxy binary used for `inspect` of --trace-dir")
    g.add_argument("--capture-wait", type=non_negative(float), default=10.0,
                   help="seconds to wait for the capture counts to settle")
    g.add_argument("--capture-tolerance", type=non_negative(int), default=0,
                   help="extra requests the proxy may have seen (other clients)")
    return p


def make_shape(args):
    if args.shape == "steady":
        return Steady(args.rate)
    if args.shape == "ramp":
        return Ramp(args.ramp_from, args.ramp_to, args.duration)
    if args.burst_length > args.burst_period:
        raise ValueError("--burst-length must not exceed --burst-period")
    if args.rate <= 0 and args.burst_length < args.burst_period:
        raise ValueError("burst: --rate (the base rate) must be > 0 unless bursts fill the "
                         "period")
    return Burst(args.rate, args.burst_rate, args.burst_length, args.burst_period)


def main(argv=None):
    args = parser().parse_args(argv)
    report_out = sys.stderr if args.json else sys.stdout

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        target = Target(args)
        u = urllib.parse.urlsplit(args.url)
        args.url_path_prefix = u.path.rstrip("/")
        shape = make_shape(args)
        if args.workload == "mixed":
            mix = parse_mix(args.mix)
        else:
            mix = {args.workload: 1.0}
        if args.check_capture and not (args.admin or args.trace_dir):
            raise ValueError("--check-capture needs --admin URL and/or --trace-dir DIR")
        if args.trace_dir and not os.path.isdir(args.trace_dir):
            raise ValueError("--trace-dir %s is not a directory" % args.trace_dir)
    except (ValueError, ssl.SSLError, OSError) as e:
        print("opensearch_load.py: error: %s" % e, file=sys.stderr)
        return 2
    ops = [op for op in OPS if mix.get(op, 0) > 0]
    cum, acc = [], 0.0
    for op in ops:
        acc += mix[op]
        cum.append(acc)
    run_id = "%08x" % (random.Random(args.seed).getrandbits(32) if args.seed is not None
                       else random.getrandbits(32))
    workload = Workload(args, run_id)

    check = CaptureCheck(args) if args.check_capture else None
    if check:
        try:
            check.before()
        except (OSError, ValueError, http.client.HTTPException,
                subprocess.SubprocessError) as e:
            print("opensearch_load.py: capture check: cannot read the counts before the run: %s"
                  % e, file=sys.stderr)
            return 2

    setup = Setup(target)
    try:
        do_setup(args, setup, workload, log)
    except SetupError as e:
        print("opensearch_load.py: setup failed: %s" % e, file=sys.stderr)
        setup.close()
        return 2

    log("run %s: %s workload, %s, %gs, %d connections -> %s" % (
        run_id, args.workload, shape.describe(), args.duration, args.connections, args.url))
    run = Run(args, target, workload, shape, (ops, cum), report_out)
    stats = run.run()

    try:
        do_teardown(args, setup, workload, log)
    except SetupError as e:
        log("teardown failed: %s" % e)
    setup.close()

    failures = []
    total = OpStats()
    for op in OPS:
        total.merge(stats.ops[op])
    if total.scheduled and total.n_errors() / total.scheduled > args.max_error_rate:
        failures.append("error rate %.4f > --max-error-rate %g" % (
            total.n_errors() / total.scheduled, args.max_error_rate))
    if total.completed == 0:
        failures.append("no request completed")
    capture = None
    if check:
        lo = total.completed + setup.completed
        hi = total.sent + setup.sent
        checks = check.after(lo, hi)
        capture = {"ok": all(c["ok"] for c in checks), "checks": checks}
        for c in checks:
            if not c["ok"]:
                failures.append("capture check %s failed" % c["source"])

    summary = build_summary(args, run, stats, shape, setup, capture, failures)
    errors_seen = [e for w in run.workers for e in w.first_errors][:5]
    print_report(summary, errors_seen, report_out)
    if args.json:
        print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
