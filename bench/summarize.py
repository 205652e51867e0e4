#!/usr/bin/env python3
"""Summarises the runs of scripts/bench.sh (runs.jsonl: one JSON object per
run, {"round", "case", "peer", "quiet_idle", "report"} or {..., "error"}) as
the markdown of docs/BENCHMARKS.md: medians over rounds, ratios to the best
peer, the issue's targets met or not, and what limited each figure.

    python3 bench/summarize.py bench/out/<time>/runs.jsonl --machine machine.txt
    python3 bench/summarize.py runs.jsonl --machine machine.txt --doc docs/BENCHMARKS.md

With --doc, the section between the `bench:begin` and `bench:end` markers
of that file is replaced by the output (which is printed as well), so the
document is regenerated rather than edited by hand. Standard library only.
"""

import argparse
import json
import re
import statistics
import sys

PEERS = ["switchboard", "switchboard-nats", "nchan", "node", "fastapi"]

# case -> (title, [(metric label, getter, higher is better, formatter)])
def _lat(key):
    return lambda r: (r.get("latency_us") or {}).get(key)


def _fmt_rate(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M/s"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k/s"
    return f"{v:.0f}/s"


def _fmt_us(v):
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


def _fmt_kib(v):
    return f"{v / 1024:.1f} KiB"


def _rss(r):
    v = r.get("rss_per_connection")
    return None if v is None else max(v, 0.0)


DELIVERIES = ("deliveries/s", lambda r: r.get("deliveries_per_s"), True, _fmt_rate)
CASES = {
    "A-ws": ("A. saturated fan-out, WebSocket, 1 room, 64 B", [DELIVERIES]),
    "A-sse": ("A. saturated fan-out, SSE, 1 room, 64 B", [DELIVERIES]),
    "B-ws": (
        "B. fixed rate fan-out, WebSocket (latency)",
        [("p50", _lat("p50"), False, _fmt_us), ("p99", _lat("p99"), False, _fmt_us), DELIVERIES],
    ),
    "B-sse": (
        "B. fixed rate fan-out, SSE (latency)",
        [("p50", _lat("p50"), False, _fmt_us), ("p99", _lat("p99"), False, _fmt_us), DELIVERIES],
    ),
    "B5-ws": (
        "B. latency floor: 5 msgs/s fan-out, WebSocket (both cores mostly idle)",
        [("p50", _lat("p50"), False, _fmt_us), ("p99", _lat("p99"), False, _fmt_us), DELIVERIES],
    ),
    "C-ws": ("C. idle subscribed WebSockets: server RSS", [("RSS/conn", _rss, False, _fmt_kib)]),
    "C-sse": ("C. idle subscribed SSE streams: server RSS", [("RSS/conn", _rss, False, _fmt_kib)]),
    "C-ws-100k": (
        "C. 100,000 idle WebSockets in one process",
        [("RSS/conn", _rss, False, _fmt_kib), ("RSS after", lambda r: r.get("rss_after"), False,
                                               lambda v: f"{v / 2**20:.0f} MiB")],
    ),
    "D-ws": (
        "D. connect + subscribe, WebSocket",
        [("connects/s", lambda r: r.get("connects_per_s"), True, _fmt_rate)],
    ),
    "E-pub100": (
        "E. acknowledged publishes, 100 rooms (WS publishers, pipelined)",
        [("publishes/s", lambda r: r.get("publishes_per_s"), True, _fmt_rate)],
    ),
    "E-pub1": (
        "E. acknowledged publishes, 1 room (WS publishers, pipelined)",
        [("publishes/s", lambda r: r.get("publishes_per_s"), True, _fmt_rate)],
    ),
    "F-grpc": ("F. saturated fan-out, gRPC Subscribe", [DELIVERIES]),
}


def load(path):
    runs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"skipping an unreadable line of {path}", file=sys.stderr)
    return runs


def by_cell(runs):
    cells = {}
    for run in runs:
        cells.setdefault((run.get("case"), run.get("peer")), []).append(run)
    return cells


def median_of(runs, getter):
    values = [getter(r["report"]) for r in runs if "report" in r]
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None, 0
    return statistics.median(values), min(values), max(values), len(values)


def peers_in(cells, case):
    return [p for p in PEERS if (case, p) in cells] + sorted(
        {p for (c, p) in cells if c == case and p not in PEERS}
    )


def case_table(cells, cases):
    out = []
    header_peers = [p for p in PEERS if any((c, p) in cells for c in cases)]
    out.append("| case | metric | " + " | ".join(header_peers) + " |")
    out.append("|---|---|" + "---|" * len(header_peers))
    for case in cases:
        title, metrics = CASES.get(case, (case, [DELIVERIES]))
        for label, getter, higher, fmt in metrics:
            medians = {}
            for p in header_peers:
                m, _, _, n = median_of(cells.get((case, p), []), getter)
                if m is not None:
                    medians[p] = m
            positive = {p: v for p, v in medians.items() if v > 0}
            best = (max if higher else min)(positive.values()) if positive else None
            row = []
            for p in header_peers:
                if (case, p) not in cells:
                    row.append("–")
                elif p not in medians:
                    row.append("failed")
                else:
                    v = medians[p]
                    ratio = f" ({v / best:.2f}×)" if best else ""
                    text = f"{fmt(v)}{ratio}"
                    row.append(f"**{text}**" if best is not None and v == best else text)
            out.append(f"| {case}: {title} | {label} | " + " | ".join(row) + " |")
    return out


def limits_table(cells):
    out = ["| case | peer | runs | subscribed | lost | errors | server CPU | server µs/delivery | generator CPU "
           "| min idle before | note |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        for peer in peers_in(cells, case):
            runs = cells[(case, peer)]
            ok = [r["report"] for r in runs if "report" in r]
            failed = [r.get("error", "?") for r in runs if "report" not in r]
            if not ok:
                out.append(f"| {case} | {peer} | 0/{len(runs)} | | | | | | | | {'; '.join(sorted(set(failed)))} |")
                continue
            subscribed = min(r.get("subscribed", 0) for r in ok)
            wanted = max(r.get("subscribers", 0) for r in ok)
            lost = max(r.get("lost", 0) for r in ok)
            errors = {}
            for r in ok:
                for k, v in (r.get("errors") or {}).items():
                    errors[k] = errors.get(k, 0) + v
            cpu = statistics.median(r["cpu"]["utilization"] for r in ok)
            quiet = min(r.get("quiet_idle", 0) for r in runs if "report" in r)
            notes = []
            if cpu > 0.9:
                notes.append("generator saturated: a floor, not the peer's limit")
            if subscribed < wanted:
                notes.append(f"only {subscribed} of {wanted} subscribed")
            if lost:
                notes.append("lost = not delivered within the drain timeout" if case.startswith(("A", "F"))
                             else "lost messages")
            rate = ok[0].get("rate")
            if rate and ok[0].get("publish_transport"):
                offered = rate * max(r.get("subscribed", 0) for r in ok)
                got = statistics.median(r.get("deliveries_per_s", 0) for r in ok)
                if got < 0.9 * offered:
                    notes.append(f"did not keep up: {_fmt_rate(got)} of {_fmt_rate(offered)} offered")
            with_cpu = [r for r in runs if "report" in r and r.get("server_cpu") is not None]
            server = statistics.median(r["server_cpu"] for r in with_cpu) if with_cpu else None
            if server is not None and server >= 0.9:
                notes.append("server core saturated")
            elif case.startswith(("A", "F")) and server is not None and cpu <= 0.9:
                ack = statistics.median((r.get("ack_latency_us") or {}).get("p50", 0) for r in ok)
                notes.append(f"neither core saturated: bound by the publish round trip (ack p50 {_fmt_us(ack)})")
            dropped = sum(v for k, v in errors.items() if k in ("grpc_resourceexhausted", "slow_consumer"))
            if dropped:
                notes.append(f"{dropped} subscriber(s) over all runs dropped by the server as slow consumers "
                             "(its bounded outbound queue): their missed messages count as lost, and the "
                             "drain timeout that waited for them dilutes both CPU figures")
            if quiet < 90:
                notes.append("measured on a busy machine (another process's load)")
            if case.startswith("E") and ok[0].get("rate") is None:
                ack = statistics.median((r.get("ack_latency_us") or {}).get("p50", 0) for r in ok)
                notes.append(f"ack p50 {_fmt_us(ack)}")
            if failed:
                notes.append(f"{len(failed)} run(s) failed: {'; '.join(sorted(set(failed)))}")
            err = ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "0"
            shown = "?" if server is None else f"{server * 100:.0f}%"
            # Server CPU seconds (over the whole bench run, set-up included)
            # per delivery: the cost the per-delivery arithmetic uses.
            per = [r["server_cpu"] * r["report"]["cpu"]["wall_s"] * 1e6 / r["report"]["deliveries"]
                   for r in with_cpu if r["report"].get("deliveries")]
            per_shown = f"{statistics.median(per):.2f}" if per and case.startswith(("A", "B", "F")) else ""
            out.append(
                f"| {case} | {peer} | {len(ok)}/{len(runs)} | {subscribed}/{wanted} | {lost} | {err} | "
                f"{shown} | {per_shown} | {cpu * 100:.0f}% | {quiet}% | {'; '.join(notes)} |"
            )
    return out


def med(cells, case, peer, getter):
    return median_of(cells.get((case, peer), []), getter)[0]


def targets_table(cells):
    out = ["| target | goal | measured | met |", "|---|---|---|---|"]

    def row(name, goal, text, met):
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        out.append(f"| {name} | {goal} | {text} | {verdict} |")

    dps = DELIVERIES[1]
    for t in ("ws", "sse"):
        sb, nchan = med(cells, f"A-{t}", "switchboard", dps), med(cells, f"A-{t}", "nchan", dps)
        if sb and nchan:
            lost = max(r["report"].get("lost", 0) for r in cells[(f"A-{t}", "switchboard")] if "report" in r)
            extra = f", lost up to {lost} per run" if lost else ""
            row(f"A {t.upper()} saturated fan-out", "≥ 4× Nchan",
                f"{sb / nchan:.2f}× ({_fmt_rate(sb)} vs {_fmt_rate(nchan)}){extra}", sb / nchan >= 4 and not lost)
        elif sb:
            row(f"A {t.upper()} saturated fan-out", "≥ 4× Nchan", f"{_fmt_rate(sb)} (no Nchan run)", None)
    for t in ("ws", "sse"):
        case = f"B-{t}"
        runs = [r["report"] for r in cells.get((case, "switchboard"), []) if "report" in r]
        if runs:
            p50, p99 = med(cells, case, "switchboard", _lat("p50")), med(cells, case, "switchboard", _lat("p99"))
            lost = max(r.get("lost", 0) for r in runs)
            nchan99 = med(cells, case, "nchan", _lat("p99"))
            extra = f"; Nchan p99 {_fmt_us(nchan99)}" if nchan99 else ""
            row(f"B {t.upper()} latency at {runs[0].get('rate') or 0:.0f} msgs/s × {runs[0].get('subscribed')}",
                "p99 ≤ 5 ms, p50 ≤ 2 ms, 0 lost",
                f"p50 {_fmt_us(p50 or 0)}, p99 {_fmt_us(p99 or 0)}, lost {lost}{extra}",
                p99 is not None and p50 is not None and p99 <= 5000 and p50 <= 2000 and lost == 0)
    for t in ("ws", "sse"):
        case = f"C-{t}"
        sb = med(cells, case, "switchboard", _rss)
        if sb is not None:
            runs = [r["report"] for r in cells[(case, "switchboard")] if "report" in r]
            others = {p: med(cells, case, p, _rss) for p in PEERS if p != "switchboard"}
            others = {p: v for p, v in others.items() if v}
            best = min(others.items(), key=lambda kv: kv[1]) if others else None
            extra = f"; best peer {best[0]} {_fmt_kib(best[1])}" if best else ""
            row(f"C {t.upper()} idle, {runs[0].get('connections')} connections", "≤ 5 KiB/conn",
                f"{_fmt_kib(sb)}{extra}", sb <= 5 * 1024)
    big = med(cells, "C-ws-100k", "switchboard", _rss)
    if big is not None:
        after = med(cells, "C-ws-100k", "switchboard", lambda r: r.get("rss_after"))
        row("C 100,000 idle WebSockets, one process", "shown", f"{_fmt_kib(big)}/conn, {after / 2**20:.0f} MiB", None)
    elif ("C-ws-100k", "switchboard") in cells:
        why = cells[("C-ws-100k", "switchboard")][0].get("error", "failed")
        row("C 100,000 idle WebSockets, one process", "shown", why, None)
    cps = lambda r: r.get("connects_per_s")
    sb = med(cells, "D-ws", "switchboard", cps)
    if sb is not None:
        nchan = med(cells, "D-ws", "nchan", cps)
        extra = f" (Nchan {_fmt_rate(nchan)})" if nchan else ""
        row("D connect + subscribe, WebSocket", "≥ 15,000/s", f"{_fmt_rate(sb)}{extra}", sb >= 15000)
    for t in ("ws", "sse"):
        sb, nats = med(cells, f"A-{t}", "switchboard", dps), med(cells, f"A-{t}", "switchboard-nats", dps)
        if sb and nats:
            row(f"E NATS fan-out, {t.upper()}", "≥ 0.8× standalone",
                f"{nats / sb:.2f}× ({_fmt_rate(nats)} vs {_fmt_rate(sb)})", nats / sb >= 0.8)
    pps = lambda r: r.get("publishes_per_s")
    for case, goal, need in (("E-pub100", "≥ 30,000/s, 0 lost", 30000), ("E-pub1", "≥ 10,000/s, 0 lost", 10000)):
        runs = [r["report"] for r in cells.get((case, "switchboard-nats"), []) if "report" in r]
        if runs:
            v = med(cells, case, "switchboard-nats", pps)
            errs = max(r.get("error_total", 0) for r in runs)
            sb = med(cells, case, "switchboard", pps)
            extra = f"; in memory {_fmt_rate(sb)}" if sb else ""
            rooms = runs[0].get("rooms")
            row(f"E JetStream acknowledged publishes, {rooms} room(s)", goal,
                f"{_fmt_rate(v)}, errors {errs}{extra}", v >= need and errs == 0)
    grpc, ws = med(cells, "F-grpc", "switchboard", dps), med(cells, "A-ws", "switchboard", dps)
    if grpc and ws:
        lost = max(r["report"].get("lost", 0) for r in cells[("F-grpc", "switchboard")] if "report" in r)
        extra = f", lost up to {lost} per run (slow-consumer drops)" if lost else ""
        row("F gRPC Subscribe fan-out", "≥ 0.8× WebSocket, 0 lost",
            f"{grpc / ws:.2f}× ({_fmt_rate(grpc)} vs {_fmt_rate(ws)}){extra}", grpc / ws >= 0.8 and not lost)
    return out


def commands(runs):
    """One command line per (case, peer), as the first round ran it."""
    out, seen = [], set()
    for run in runs:
        key = (run.get("case"), run.get("peer"))
        if key in seen or "command" not in run:
            continue
        seen.add(key)
        out.append(f"# {key[0]} on {key[1]}")
        out.append(run["command"])
    return out


def render(runs, machine):
    cells = by_cell(runs)
    info = dict(line.split(" ", 1) for line in machine.splitlines() if " " in line)
    rounds = max((r.get("round", 0) for r in runs), default=0)
    out = [
        f"Measured at commit `{info.get('commit', 'unknown')}` on {info.get('date', '?')}, "
        f"{rounds} round(s), peers interleaved; figures are medians over rounds, "
        "`(n×)` is the ratio to the best peer of the row (bold).",
        "",
        "```",
        machine.strip(),
        "```",
        "",
        "#### Targets",
        "",
        *targets_table(cells),
        "",
        "#### Every case",
        "",
        *case_table(cells, [c for c in CASES if any(k[0] == c for k in cells)]),
        "",
        "#### What limited each figure",
        "",
        *limits_table(cells),
        "",
        "#### The commands",
        "",
        "Each peer listened on the URL of its command (gRPC on the next port, nats-server on the one after), started fresh "
        "for each run, pinned with `taskset -c 0`; `switchboard bench` ran as:",
        "",
        "```sh",
        *commands(runs),
        "```",
    ]
    return "\n".join(out) + "\n"


BEGIN = "<!-- bench:begin: generated by scripts/bench.sh (bench/summarize.py); do not edit by hand -->"
END = "<!-- bench:end -->"


def update_doc(path, text):
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    block = f"{BEGIN}\n{text}{END}"
    if not pattern.search(doc):
        sys.exit(f"{path} has no {BEGIN!r} … {END!r} section")
    with open(path, "w", encoding="utf-8") as f:
        f.write(pattern.sub(lambda _: block, doc, count=1))


def one_line(report):
    """A run's figures on one line, for the progress log of scripts/bench.sh."""
    r = json.loads(report)
    out = []
    if r.get("publish_transport"):
        if r.get("subscribers"):
            out.append(f"{_fmt_rate(r['deliveries_per_s'])} deliveries, lost {r['lost']}")
        out.append(f"{_fmt_rate(r['publishes_per_s'])} publishes")
    lat = r.get("latency_us") or {}
    if lat:
        out.append(f"p50 {_fmt_us(lat['p50'])} p99 {_fmt_us(lat['p99'])}")
    if r.get("rss_per_connection") is not None:
        out.append(f"{_fmt_kib(r['rss_per_connection'])}/conn of {r['connections']}")
    elif r.get("connects_per_s") is not None:
        out.append(f"{_fmt_rate(r['connects_per_s'])} connects of {r['connections']}")
    out.append(f"generator CPU {r['cpu']['utilization'] * 100:.0f}%")
    if r.get("error_total"):
        out.append(f"errors {r['errors']}")
    return "; ".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="?", help="runs.jsonl written by scripts/bench.sh")
    ap.add_argument("--one", metavar="REPORT", help="print one report's figures on a line")
    ap.add_argument("--machine", help="machine.txt written by scripts/bench.sh")
    ap.add_argument("--doc", help="rewrite the generated section of this markdown file")
    args = ap.parse_args()
    if args.one is not None:
        print(one_line(args.one))
        return
    if not args.runs:
        ap.error("give runs.jsonl (or --one REPORT)")
    machine = ""
    if args.machine:
        with open(args.machine, encoding="utf-8") as f:
            machine = f.read()
    text = render(load(args.runs), machine)
    sys.stdout.write(text)
    if args.doc:
        update_doc(args.doc, text)


if __name__ == "__main__":
    main()
