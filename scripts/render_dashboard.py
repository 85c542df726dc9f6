#!/usr/bin/env python3
"""Renders docs/grafana/tower-outbound.json from a real run of the main job, as an SVG.

It runs `lehnz_sync` (its in-process Lehnz simulator, chaos on) with `--metrics`, scrapes the
Prometheus endpoint every second while the job runs, takes the simulator down once in the
middle of the run (`POST /_sim/outage?secs=N`), then evaluates every panel's queries over the
scrapes, as Prometheus would at each scrape, and draws the dashboard's panels, in its grid,
in Grafana's dark style.

The evaluator knows the forms the dashboard uses and no more: selectors with `=`, `!=`, `=~`
and `!~` matchers; `rate` and `increase` over a range (extrapolated as Prometheus does);
`sum`, `max`, `min`, `avg` and `count` `by (...)`; `histogram_quantile`; `time()`; numbers;
`+ - * /` and comparison filters between vectors (matched on identical label sets) and
scalars. Anything else stops it with an error naming the panel and the query, so the
dashboard and the picture cannot drift apart silently.

Standard library only. `scripts/dashboard.sh` builds the example and runs this.

    python3 scripts/render_dashboard.py [--events 200000] [--outage-at 8] [--outage-secs 12]
        [--patience 5] [--out docs/grafana/tower-outbound.svg] [--save scrapes.jsonl]
    python3 scripts/render_dashboard.py --load scrapes.jsonl   # draw again, no run
"""

import argparse
import html
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class QueryError(Exception):
    """A query the evaluator does not know how to evaluate."""


# --- Scraping ------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_exposition(text):
    """The samples of a Prometheus text exposition: {(name, ((label, value), ...)): value}."""
    samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if not match:
            raise ValueError(f"cannot read exposition line {line!r}")
        name, labels, value = match.groups()
        pairs = []
        rest = labels or ""
        while rest:
            label = LABEL.match(rest)
            if not label:
                raise ValueError(f"cannot read the labels of {line!r}")
            value_text = label.group(2).replace('\\"', '"').replace("\\n", "\n")
            pairs.append((label.group(1), value_text.replace("\\\\", "\\")))
            rest = rest[label.end():]
        pairs.append(("__name__", name))
        samples[tuple(sorted(pairs))] = float(value)
    return samples


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_job(args):
    """Runs the job, scrapes it every `args.interval` seconds and takes its simulator down once.

    Returns (scrapes, outage): scrapes is a list of (unix time, text); outage is (start, end)
    in unix time, or None when the run ended before it.
    """
    port = free_port()
    command = [
        args.cargo, "run", "--release", "--quiet", "--features", "lehnz,sim,metrics",
        "--example", "lehnz_sync", "--",
        "--events", str(args.events),
        "--seed", str(args.seed),
        "--patience", str(args.patience),
        "--metrics", f"127.0.0.1:{port}",
    ]
    print("running:", " ".join(command), file=sys.stderr)
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    # The first line names the simulator: "ingesting N events into http://127.0.0.1:P (...)".
    report = []
    simulator = []
    found = threading.Event()

    def read_output():
        for line in job.stdout:
            report.append(line)
            if not simulator:
                match = re.search(r"into (http://\S+)", line)
                if match:
                    simulator.append(match.group(1))
                    found.set()
        found.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    scrapes = []
    outage = None
    url = f"http://127.0.0.1:{port}/metrics"
    next_scrape = time.time()
    while job.poll() is None:
        now = time.time()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                scrapes.append((now, response.read().decode()))
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not serving yet, or gone
        # Half an interval early: the scrape closest to the time asked for triggers it.
        if scrapes and outage is None and now - scrapes[0][0] >= args.outage_at - args.interval / 2:
            found.wait(10)
            if not simulator:
                job.kill()
                raise SystemExit("render_dashboard: the job did not name its simulator")
            outage_url = f"{simulator[0]}/_sim/outage?secs={args.outage_secs}"
            request = urllib.request.Request(outage_url, method="POST", data=b"")
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
            outage = (now, now + args.outage_secs)
            print(f"outage of {args.outage_secs} s at {now - scrapes[0][0]:.0f} s",
                  file=sys.stderr)
        next_scrape += args.interval
        time.sleep(max(0.0, next_scrape - time.time()))
    reader.join(5)
    sys.stderr.write("".join(report))
    if job.returncode not in (0, 75):
        raise SystemExit(f"render_dashboard: the job failed (exit {job.returncode})")
    if len(scrapes) < 10:
        raise SystemExit(f"render_dashboard: only {len(scrapes)} scrapes; run more --events")
    return scrapes, outage


# --- PromQL, the forms the dashboard uses -----------------------------------------------------

TOKEN = re.compile(r"""
    \s*(?:
      (?P<number>\d+(?:\.\d+)?(?![a-zA-Z_]))
    | (?P<duration>\d+(?:ms|s|m|h|d|w|y))
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/(){}\[\],=<>])
    )""", re.VERBOSE)

AGGREGATIONS = {"sum", "max", "min", "avg", "count"}
FUNCTIONS = {"rate", "increase", "histogram_quantile", "time"}
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
PRECEDENCE = {"==": 1, "!=": 1, ">": 1, "<": 1, ">=": 1, "<=": 1,
              "+": 2, "-": 2, "*": 3, "/": 3}


def tokenize(query):
    tokens, position = [], 0
    query = query.rstrip()
    while position < len(query):
        match = TOKEN.match(query, position)
        if not match or match.end() == position:
            raise QueryError(f"cannot read {query[position:]!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def duration(text):
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not match:
        raise QueryError(f"not a duration: {text!r}")
    return int(match.group(1)) * UNITS[match.group(2)]


class Parser:
    """Recursive descent over the tokens; builds tuples ("kind", ...)."""

    def __init__(self, query):
        self.query = query
        self.tokens = tokenize(query)
        self.at = 0

    def peek(self, offset=0):
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else (None, None)

    def take(self, value=None):
        token = self.peek()
        if token[0] is None or (value is not None and token[1] != value):
            raise QueryError(f"expected {value or 'more'} at {self.rest()!r}")
        self.at += 1
        return token

    def rest(self):
        return " ".join(t[1] for t in self.tokens[self.at:]) or "the end"

    def parse(self):
        node = self.expression(0)
        if self.at != len(self.tokens):
            raise QueryError(f"unexpected {self.rest()!r}")
        return node

    def expression(self, least):
        """Precedence climbing: binary operators of precedence `least` or higher."""
        left = self.unary()
        while True:
            kind, value = self.peek()
            if kind != "op" or value not in PRECEDENCE or PRECEDENCE[value] < least:
                return left
            self.take()
            if self.peek() == ("ident", "bool"):
                raise QueryError("the bool modifier is not supported")
            if self.peek()[1] in ("on", "ignoring", "group_left", "group_right"):
                raise QueryError(f"vector matching with {self.peek()[1]} is not supported")
            right = self.expression(PRECEDENCE[value] + 1)
            left = ("binary", value, left, right)

    def unary(self):
        kind, value = self.peek()
        if kind == "number":
            self.take()
            return ("number", float(value))
        if kind == "op" and value == "(":
            self.take()
            node = self.expression(0)
            self.take(")")
            return node
        if kind == "op" and value == "-":
            self.take()
            return ("binary", "*", ("number", -1.0), self.unary())
        if kind == "ident":
            if value in AGGREGATIONS:
                return self.aggregation()
            if self.peek(1) == ("op", "("):
                return self.function()
            return self.selector()
        raise QueryError(f"unexpected {self.rest()!r}")

    def aggregation(self):
        _, op = self.take()
        if self.peek() != ("ident", "by"):
            raise QueryError(f"{op} without `by (...)` before its argument is not supported")
        self.take()
        labels = self.label_list()
        self.take("(")
        argument = self.expression(0)
        self.take(")")
        if self.peek()[1] in ("by", "without"):
            raise QueryError(f"{op}(...) {self.peek()[1]} (...) is not supported")
        return ("aggregate", op, tuple(labels), argument)

    def label_list(self):
        self.take("(")
        labels = []
        while self.peek() != ("op", ")"):
            kind, value = self.take()
            if kind != "ident":
                raise QueryError(f"expected a label at {value!r}")
            labels.append(value)
            if self.peek() == ("op", ","):
                self.take()
        self.take(")")
        return labels

    def function(self):
        _, name = self.take()
        if name not in FUNCTIONS:
            raise QueryError(f"function {name}() is not supported")
        self.take("(")
        if name == "time":
            self.take(")")
            return ("time",)
        if name == "histogram_quantile":
            kind, value = self.take()
            if kind != "number":
                raise QueryError("histogram_quantile needs a number first")
            self.take(",")
            argument = self.expression(0)
            self.take(")")
            return ("quantile", float(value), argument)
        selector = self.selector()
        self.take("[")
        kind, value = self.take()
        if kind != "duration":
            raise QueryError(f"expected a range at {value!r}")
        self.take("]")
        if self.peek() == ("ident", "offset"):
            raise QueryError("offset is not supported")
        self.take(")")
        return ("range_function", name, selector, duration(value))

    def selector(self):
        kind, name = self.take()
        if kind != "ident":
            raise QueryError(f"expected a metric name at {name!r}")
        matchers = [("__name__", "=", name)]
        if self.peek() == ("op", "{"):
            self.take()
            while self.peek() != ("op", "}"):
                _, label = self.take()
                _, op = self.take()
                if op not in ("=", "!=", "=~", "!~"):
                    raise QueryError(f"matcher {op!r} is not supported")
                kind, text = self.take()
                if kind != "string":
                    raise QueryError(f"expected a quoted value at {text!r}")
                matchers.append((label, op, json.loads(text)))
                if self.peek() == ("op", ","):
                    self.take()
            self.take("}")
        if self.peek() == ("ident", "offset"):
            raise QueryError("offset is not supported")
        return ("selector", tuple(matchers))


class Series:
    """Every scrape, as Prometheus stores them: per series, its (time, value) samples."""

    LOOKBACK = 300.0

    def __init__(self, scrapes):
        self.times = [t for t, _ in scrapes]
        self.by_key = {}
        for t, text in scrapes:
            for key, value in parse_exposition(text).items():
                self.by_key.setdefault(key, []).append((t, value))
        self.present = [set(parse_exposition(text)) for _, text in scrapes]

    def select(self, matchers):
        compiled = []
        for label, op, value in matchers:
            if op in ("=~", "!~"):
                try:
                    compiled.append((label, op, re.compile(value)))
                except re.error as err:
                    raise QueryError(f"bad regex {value!r}: {err}") from None
            else:
                compiled.append((label, op, value))
        for key in self.by_key:
            labels = dict(key)
            if all(matches(labels.get(label, ""), op, value) for label, op, value in compiled):
                yield key

    def instant(self, key, index):
        """The value of `key` at scrape `index`; None once a scrape no longer has it (stale)."""
        if key not in self.present[index]:
            return None
        t = self.times[index]
        for ts, value in reversed(self.by_key[key]):
            if ts <= t:
                return value if t - ts <= self.LOOKBACK else None
        return None

    def window(self, key, index, seconds):
        t = self.times[index]
        return [(ts, v) for ts, v in self.by_key[key] if t - seconds < ts <= t]


def matches(actual, op, expected):
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    found = expected.fullmatch(actual) is not None
    return found if op == "=~" else not found


def extrapolated(points, start, end, is_rate):
    """Prometheus's extrapolatedRate for a counter: None with fewer than two samples."""
    if len(points) < 2:
        return None
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    result, previous = last_v - first_v, first_v
    for _, value in points[1:]:
        if value < previous:
            result += previous  # a counter reset
        previous = value
    sampled = last_t - first_t
    average = sampled / (len(points) - 1)
    to_start, to_end = first_t - start, end - last_t
    if to_start >= average * 1.1:
        to_start = average / 2
    if result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        to_start = min(to_start, to_zero)
    if to_end >= average * 1.1:
        to_end = average / 2
    factor = (sampled + to_start + to_end) / sampled
    if is_rate:
        factor /= end - start
    return result * factor


def without_name(labels):
    return tuple(pair for pair in labels if pair[0] != "__name__")


def evaluate(node, series, index):
    """A node at scrape `index`: a float (scalar) or {labels: value} (instant vector)."""
    kind = node[0]
    if kind == "number":
        return node[1]
    if kind == "time":
        return series.times[index]
    if kind == "selector":
        vector = {}
        for key in series.select(node[1]):
            value = series.instant(key, index)
            if value is not None:
                vector[key] = value
        return vector
    if kind == "range_function":
        _, name, selector, seconds = node
        end = series.times[index]
        vector = {}
        for key in series.select(selector[1]):
            value = extrapolated(series.window(key, index, seconds), end - seconds, end,
                                 name == "rate")
            if value is not None:
                vector[without_name(key)] = value
        return vector
    if kind == "aggregate":
        _, op, by, argument = node
        vector = evaluate(argument, series, index)
        if not isinstance(vector, dict):
            raise QueryError(f"{op} of a scalar")
        groups = {}
        for labels, value in vector.items():
            group = tuple(pair for pair in labels if pair[0] in by)
            groups.setdefault(group, []).append(value)
        fold = {"sum": sum, "max": max, "min": min, "count": len,
                "avg": lambda values: sum(values) / len(values)}[op]
        return {group: float(fold(values)) for group, values in groups.items()}
    if kind == "quantile":
        _, q, argument = node
        vector = evaluate(argument, series, index)
        if not isinstance(vector, dict):
            raise QueryError("histogram_quantile of a scalar")
        buckets = {}
        for labels, value in vector.items():
            le = dict(labels).get("le")
            if le is None:
                raise QueryError("histogram_quantile over series without an le label")
            group = tuple(pair for pair in labels if pair[0] not in ("le", "__name__"))
            buckets.setdefault(group, []).append((float(le), value))
        result = {}
        for group, points in buckets.items():
            value = bucket_quantile(q, sorted(points))
            if value is not None:
                result[group] = value
        return result
    if kind == "binary":
        _, op, left, right = node
        return binary(op, evaluate(left, series, index), evaluate(right, series, index))
    raise QueryError(f"cannot evaluate {kind}")


def bucket_quantile(q, buckets):
    """Prometheus's bucketQuantile over (upper bound, cumulative count), sorted."""
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return None
    # Counts are cumulative; a non-monotonic series (a scrape mid-update) is evened out.
    fixed, highest = [], 0.0
    for bound, count in buckets:
        highest = max(highest, count)
        fixed.append((bound, highest))
    total = fixed[-1][1]
    if total == 0 or math.isnan(total):
        return None
    rank = q * total
    position = next(i for i, (_, count) in enumerate(fixed) if count >= rank)
    if position == len(fixed) - 1:
        return fixed[-2][0]
    if position == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start, end, count = 0.0, fixed[position][0], fixed[position][1]
    if position > 0:
        start = fixed[position - 1][0]
        count -= fixed[position - 1][1]
        rank -= fixed[position - 1][1]
    return start + (end - start) * (rank / count) if count > 0 else start


def apply(op, a, b):
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            return math.nan if a == 0 else math.copysign(math.inf, a)
        return a / b
    return {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


def binary(op, left, right):
    comparison = op in ("==", "!=", ">", "<", ">=", "<=")
    left_scalar, right_scalar = not isinstance(left, dict), not isinstance(right, dict)
    if left_scalar and right_scalar:
        if comparison:
            raise QueryError("a comparison between scalars needs bool")
        return apply(op, left, right)
    if comparison:
        if left_scalar:
            return {k: v for k, v in right.items() if apply(op, left, v)}
        if right_scalar:
            return {k: v for k, v in left.items() if apply(op, v, right)}
        rights = {without_name(k): v for k, v in right.items()}
        return {k: v for k, v in left.items()
                if without_name(k) in rights and apply(op, v, rights[without_name(k)])}
    if left_scalar:
        return {without_name(k): apply(op, left, v) for k, v in right.items()}
    if right_scalar:
        return {without_name(k): apply(op, v, right) for k, v in left.items()}
    rights = {}
    for key, value in right.items():
        if without_name(key) in rights:
            raise QueryError(f"many-to-many matching for {op}: {dict(key)}")
        rights[without_name(key)] = value
    return {without_name(k): apply(op, v, rights[without_name(k)])
            for k, v in left.items() if without_name(k) in rights}


# --- The dashboard's variables and panels -------------------------------------------------------


def label_values(query, series):
    match = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*"
                         r"([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query)
    if not match:
        raise QueryError(f"variable query {query!r} is not label_values(metric, label)")
    metric, label = match.groups()
    keys = list(series.select([("__name__", "=", metric)]))
    if not keys:
        raise QueryError(f"variable query {query!r}: no series {metric} in the scrapes")
    return sorted({dict(key)[label] for key in keys if label in dict(key)})


def variables(dashboard, series, interval):
    """Each variable's value as a query sees it, all values selected."""
    values = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable["type"]
        if kind == "datasource":
            values[name] = "prometheus"
        elif kind == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            found = label_values(query, series)
            if variable.get("includeAll") and variable.get("allValue"):
                values[name] = variable["allValue"]
            else:
                values[name] = "(" + "|".join(re.escape(v) for v in found) + ")"
            print(f"${name}: {found}", file=sys.stderr)
        else:
            raise QueryError(f"variable {name} of type {kind} is not supported")
    # Grafana: $__interval is the step (here the scrape interval, the data source's minimum),
    # $__rate_interval max(4 x scrape interval, $__interval + scrape interval).
    values["__interval"] = f"{round(interval)}s"
    values["__rate_interval"] = f"{round(max(4 * interval, 2 * interval))}s"
    values["__range"] = f"{round(series.times[-1] - series.times[0]) + 1}s"
    return values


def substitute(query, values):
    def replace(match):
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise QueryError(f"unknown variable ${name}")
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]", replace, query)


def legend(format_text, labels):
    plain = dict(labels)
    if not format_text:
        inner = ", ".join(f'{k}="{v}"' for k, v in labels if k != "__name__")
        return plain.get("__name__", "") + "{" + inner + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: plain.get(m.group(1), ""), format_text)


def panel_lines(panel, series, values):
    """[(legend, [value or None per scrape])] for every target of the panel."""
    lines = []
    for target in panel.get("targets", []):
        query = target["expr"]
        try:
            query = substitute(query, values)
            node = Parser(query).parse()
            results = [evaluate(node, series, i) for i in range(len(series.times))]
        except QueryError as err:
            raise SystemExit(f"render_dashboard: panel {panel['title']!r}, query {query!r}: "
                             f"{err}") from None
        keys = []
        for result in results:
            if not isinstance(result, dict):
                raise SystemExit(f"render_dashboard: panel {panel['title']!r}: {query!r} "
                                 "is a scalar, not a vector")
            keys.extend(k for k in result if k not in keys)
        for key in sorted(keys):
            points = []
            for result in results:
                value = result.get(key)
                points.append(value if value is not None and math.isfinite(value) else None)
            lines.append((legend(target.get("legendFormat", ""), key), points))
    return lines


# --- Drawing ---------------------------------------------------------------------------------

CANVAS = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3036"
TEXT = "#ccccdc"
WEAK = "#8e8e9f"
GRID = "#26292f"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#705da0", "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c"]
FONT = "Inter, Helvetica, Arial, sans-serif"
WIDTH = 1800
CELL = WIDTH / 24
ROW = 30
MARGIN = 8
HEADER = 88


def esc(text):
    return html.escape(str(text), quote=True)


def nice_step(span, count):
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def format_value(value, unit, decimals=None, step=None):
    if unit == "percentunit":
        digits = 0 if step is None or step * 100 >= 1 else 1
        return f"{value * 100:.{digits}f}%"
    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1:
            ms = value * 1000
            return f"{ms:.0f} ms" if step is None or step * 1000 >= 1 else f"{ms:.1f} ms"
        if abs(value) >= 120:
            return f"{value / 60:.1f} min".replace(".0 min", " min")
        return f"{value:.1f} s".replace(".0 s", " s")
    if unit not in ("short", "none", None):
        raise SystemExit(f"render_dashboard: unit {unit!r} is not supported")
    if decimals == 0:
        return f"{value:.0f}"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}K".replace(".0K", "K")
    if step is not None and step < 1:
        digits = min(3, max(1, -math.floor(math.log10(step))))
        return f"{value:.{digits}f}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def draw_panel(out, panel, lines, box, times, outage):
    x, y, w, h = box
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    unit = defaults.get("unit", "short")
    out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="2" '
               f'fill="{PANEL}" stroke="{BORDER}"/>')
    out.append(f'<text x="{x + 10:.1f}" y="{y + 21:.1f}" fill="{TEXT}" font-size="14" '
               f'font-weight="500">{esc(panel["title"])}</text>')
    # The legend, under the plot: as many rows as it needs.
    items, rows, cursor = [], 0, 0.0
    for i, (name, _) in enumerate(lines):
        width = 22 + 6.6 * len(name) + 14
        if cursor + width > w - 20 and cursor > 0:
            rows, cursor = rows + 1, 0.0
        items.append((i, name, cursor, rows))
        cursor += width
    legend_height = (rows + 1) * 18 if lines else 0
    top, right = y + 36, x + w - 14
    bottom = y + h - 26 - legend_height
    values = [v for _, points in lines for v in points if v is not None]
    low = defaults.get("min", min(values, default=0.0))
    high = defaults.get("max", max(values, default=1.0))
    if "max" not in defaults:
        high = max(high, low + (1e-9 if values else 1.0))
        if high <= low:
            high = low + 1
    mappings = {}
    for mapping in defaults.get("mappings", []):
        for key, option in mapping.get("options", {}).items():
            mappings[float(key)] = option.get("text", key)
    if mappings:
        ticks = sorted(v for v in mappings if low <= v <= high)
        step = 1
    else:
        step = nice_step(high - low, 4)
        if "max" not in defaults:
            high = math.ceil(high / step - 1e-9) * step
        ticks = []
        tick = math.ceil(low / step - 1e-9) * step
        while tick <= high + step * 1e-6:
            ticks.append(tick)
            tick += step
    if high == low:
        high = low + 1
    labels = {tick: (mappings.get(tick) if mappings
                     else format_value(tick, unit, defaults.get("decimals"), step))
              for tick in ticks}
    # Room for the longest tick label (and the axis label, turned on its side).
    left = x + 16 + 6.5 * max((len(t) for t in labels.values()), default=1)
    if custom.get("axisLabel"):
        left += 16

    def sx(t):
        return left + (t - times[0]) / max(times[-1] - times[0], 1e-9) * (right - left)

    def sy(v):
        return bottom - (v - low) / (high - low) * (bottom - top)

    if outage:
        start, end = max(outage[0], times[0]), min(outage[1], times[-1])
        if end > start:
            out.append(f'<rect x="{sx(start):.1f}" y="{top:.1f}" width="{sx(end) - sx(start):.1f}" '
                       f'height="{bottom - top:.1f}" fill="#f2495c" fill-opacity="0.08"/>')
            out.append(f'<line x1="{sx(start):.1f}" y1="{bottom + 3:.1f}" x2="{sx(end):.1f}" '
                       f'y2="{bottom + 3:.1f}" stroke="#f2495c" stroke-width="3"/>')
    for tick in ticks:
        out.append(f'<line x1="{left:.1f}" y1="{sy(tick):.1f}" x2="{right:.1f}" '
                   f'y2="{sy(tick):.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 6:.1f}" y="{sy(tick) + 4:.1f}" fill="{WEAK}" '
                   f'font-size="11" text-anchor="end">{esc(labels[tick])}</text>')
    if custom.get("axisLabel"):
        cx, cy = x + 14, (top + bottom) / 2
        out.append(f'<text x="{cx:.1f}" y="{cy:.1f}" fill="{WEAK}" font-size="11" '
                   f'text-anchor="middle" transform="rotate(-90 {cx:.1f} {cy:.1f})">'
                   f'{esc(custom["axisLabel"])}</text>')
    span = times[-1] - times[0]
    tick_step = nice_step(span, max(2, int((right - left) / 90)))
    tick_step = max(5, round(tick_step / 5) * 5)
    first = math.ceil(times[0] / tick_step) * tick_step
    t = first
    while t <= times[-1]:
        if sx(t) > right - 24:
            break  # its label would cross the panel's edge
        out.append(f'<line x1="{sx(t):.1f}" y1="{top:.1f}" x2="{sx(t):.1f}" y2="{bottom:.1f}" '
                   f'stroke="{GRID}"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{bottom + 16:.1f}" fill="{WEAK}" font-size="11" '
                   f'text-anchor="middle">{time.strftime("%H:%M:%S", time.gmtime(t))}</text>')
        t += tick_step
    fill = custom.get("fillOpacity", 0) / 100
    width = custom.get("lineWidth", 1)
    for i, (_, points) in enumerate(lines):
        color = PALETTE[i % len(PALETTE)]
        runs, current = [], []
        for t, v in zip(times, points):
            if v is None:
                if current:
                    runs.append(current)
                current = []
            else:
                clamped = min(max(v, low), high)
                current.append((sx(t), sy(clamped)))
        if current:
            runs.append(current)
        for run in runs:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            if fill and len(run) > 1:
                base = sy(max(low, 0) if low <= 0 <= high else low)
                area = f"{run[0][0]:.1f},{base:.1f} {path} {run[-1][0]:.1f},{base:.1f}"
                out.append(f'<polygon points="{area}" fill="{color}" '
                           f'fill-opacity="{fill}"/>')
            if len(run) == 1:
                out.append(f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="1.8" '
                           f'fill="{color}"/>')
            else:
                out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                           f'stroke-width="{width + 0.5}" stroke-linejoin="round"/>')
    if not lines:
        out.append(f'<text x="{(left + right) / 2:.1f}" y="{(top + bottom) / 2:.1f}" '
                   f'fill="{WEAK}" font-size="13" text-anchor="middle">No data</text>')
    legend_top = bottom + 30
    for i, name, offset, row in items:
        lx, ly = x + 12 + offset, legend_top + row * 18
        out.append(f'<rect x="{lx:.1f}" y="{ly - 5:.1f}" width="14" height="4" rx="1" '
                   f'fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(f'<text x="{lx + 20:.1f}" y="{ly:.1f}" fill="{TEXT}" font-size="12">'
                   f'{esc(name)}</text>')


def render(dashboard, series, outage, interval, caption):
    values = variables(dashboard, series, interval)
    times = series.times
    panels = dashboard["panels"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = HEADER + bottom * ROW + MARGIN * 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 2 * MARGIN}" '
           f'height="{height:.0f}" viewBox="0 0 {WIDTH + 2 * MARGIN} {height:.0f}" '
           f'font-family="{FONT}">',
           f'<rect width="100%" height="100%" fill="{CANVAS}"/>',
           f'<text x="{MARGIN + 4}" y="30" fill="{TEXT}" font-size="20" font-weight="500">'
           f'{esc(dashboard["title"])}</text>']
    chips = [(v.get("label", v["name"]), "Prometheus" if v["type"] == "datasource" else "All")
             for v in dashboard.get("templating", {}).get("list", [])]
    chip_x = MARGIN + 4
    for label, value in chips:
        width = 7 * (len(label) + len(value)) + 34
        out.append(f'<rect x="{chip_x}" y="44" width="{width}" height="24" rx="2" '
                   f'fill="{PANEL}" stroke="{BORDER}"/>')
        out.append(f'<text x="{chip_x + 8}" y="60" font-size="12"><tspan fill="{WEAK}">'
                   f'{esc(label)}</tspan><tspan fill="{TEXT}" dx="8">{esc(value)}</tspan></text>')
        chip_x += width + 8
    out.append(f'<text x="{WIDTH + MARGIN - 4}" y="30" fill="{WEAK}" font-size="12" '
               f'text-anchor="end">{esc(caption[0])}</text>')
    out.append(f'<text x="{WIDTH + MARGIN - 4}" y="48" fill="{WEAK}" font-size="12" '
               f'text-anchor="end">{esc(caption[1])}</text>')
    if outage:
        out.append(f'<rect x="{WIDTH + MARGIN - 120}" y="58" width="14" height="10" '
                   f'fill="#f2495c" fill-opacity="0.3"/>')
        out.append(f'<text x="{WIDTH + MARGIN - 4}" y="67" fill="{WEAK}" font-size="12" '
                   f'text-anchor="end">simulator down</text>')
    for panel in panels:
        grid = panel["gridPos"]
        x = MARGIN + grid["x"] * CELL
        y = HEADER + grid["y"] * ROW
        if panel["type"] == "row":
            out.append(f'<text x="{x + 4:.1f}" y="{y + 21:.1f}" fill="{TEXT}" font-size="16" '
                       f'font-weight="500">{esc(panel["title"])}</text>')
            continue
        if panel["type"] != "timeseries":
            raise SystemExit(f"render_dashboard: panel type {panel['type']!r} is not supported")
        box = (x + MARGIN / 2, y + MARGIN / 2, grid["w"] * CELL - MARGIN,
               grid["h"] * ROW - MARGIN)
        lines = panel_lines(panel, series, values)
        points = sum(1 for _, p in lines for v in p if v is not None)
        print(f"  {panel['title']}: {len(lines)} series, {points} points", file=sys.stderr)
        draw_panel(out, panel, lines, box, times, outage)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", default=os.path.join(ROOT, "docs/grafana/tower-outbound.json"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs/grafana/tower-outbound.svg"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--patience", type=int, default=5,
                        help="seconds a batch waits for an open circuit (the job's --patience)")
    parser.add_argument("--outage-at", type=float, default=8,
                        help="seconds after the first scrape to take the simulator down")
    parser.add_argument("--outage-secs", type=float, default=12)
    parser.add_argument("--interval", type=float, default=1.0, help="scrape interval, seconds")
    parser.add_argument("--cargo", default=os.environ.get("CARGO", "cargo"))
    parser.add_argument("--save", help="write the scrapes here (JSON lines), to draw again")
    parser.add_argument("--load", help="draw from scrapes saved with --save; no run")
    args = parser.parse_args()

    with open(args.dashboard) as f:
        dashboard = json.load(f)
    if args.load:
        with open(args.load) as f:
            records = [json.loads(line) for line in f]
        meta, scrapes = records[0], [(r["t"], r["text"]) for r in records[1:]]
        outage = tuple(meta["outage"]) if meta.get("outage") else None
        run = meta["run"]
    else:
        scrapes, outage = run_job(args)
        run = {"events": args.events, "seed": args.seed, "patience": args.patience,
               "outage_secs": args.outage_secs, "interval": args.interval}
        if args.save:
            with open(args.save, "w") as f:
                f.write(json.dumps({"outage": outage, "run": run}) + "\n")
                for t, text in scrapes:
                    f.write(json.dumps({"t": t, "text": text}) + "\n")
    series = Series(scrapes)
    start = series.times[0]
    caption = (
        f"lehnz_sync --events {run['events']} --seed {run['seed']} --patience "
        f"{run['patience']} --metrics (simulator with chaos), scraped every "
        f"{run['interval']:g} s, {len(scrapes)} scrapes",
        (f"simulator down {run['outage_secs']:g} s from {outage[0] - start:.0f} s "
         "(POST /_sim/outage); rendered by scripts/dashboard.sh" if outage
         else "rendered by scripts/dashboard.sh"),
    )
    svg = render(dashboard, series, outage, run["interval"], caption)
    with open(args.out, "w") as f:
        f.write(svg)
    print(f"wrote {os.path.relpath(args.out, ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
