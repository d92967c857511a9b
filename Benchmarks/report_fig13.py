#!/usr/bin/env python3
"""Figure 13's rows of the benchmark table (NAT-PMP port mappings: midcomd ÷ miniupnpd, the same client).

Run by bench.sh after report.py: reads Benchmarks/results/raw.jsonl, prints the rows in report.py's table
format and appends them to the "rows" of latest.json (same fields: value and reference are median/min/max over
the runs, ratio = median ÷ median). Prints nothing when figure 13 did not run.

A rate is recorded by bench.sh only for a run in which every request was granted; when any request of a case
was refused or left unanswered the row carries the failure instead of a number.
"""
import json
import statistics
import sys
from collections import defaultdict

raw_path, out_path = sys.argv[1:3]
values = defaultdict(list)
for line in open(raw_path):
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    if r["fig"] != "13":
        continue
    try:
        values[(r["case"], r["metric"])].append(float(r["value"]))
    except (TypeError, ValueError):
        pass
if not values:
    sys.exit(0)


def stat(case, metric):
    v = values.get((case, metric))
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}


rows = []


def row(name, value, reference, unit, target=None, higher_is_better=True, note="", failed=False):
    if failed or value is None or reference is None:
        rows.append({"fig": 13, "name": name, "missing": True, "note": note or "not measured"})
        return
    ratio = value["median"] / reference["median"] if reference["median"] else None
    met = None
    if target is not None and ratio is not None:
        met = ratio >= target if higher_is_better else ratio <= target
    rows.append({"fig": 13, "name": name, "value": value, "reference": reference, "ratio": ratio, "unit": unit,
                 "target": target, "higher_is_better": higher_is_better, "met": met, "note": note})


def problems(client):
    """What went wrong with this client against either daemon: (failed, notes)."""
    failed, notes = False, []
    for d in ("midcomd", "miniupnpd"):
        case = f"{d}-{client}"
        refused = values.get((case, "refused"), [])
        bad = [v for v in refused if v > 0]
        if bad:
            failed = True
            notes.append(f"FAILED: {d} refused or left unanswered {int(sum(bad))} requests in {len(bad)} of "
                         f"{len(refused)} runs (the bench's log names the first)")
        if stat(d, "installed_check") is None:
            failed = True
            notes.append(f"FAILED: {d}'s mapping was not checked in its kernel table")
        left = stat(case, "leftover_dnat")
        if left and left["max"] > 0:
            failed = True
            notes.append(f"FAILED: {d} left DNATs to the client in the kernel after a loop (a removal it granted "
                         f"did not take effect)")
        for m, what in (("mapped_minus_cycles", "mappings"), ("torn_down_minus_cycles", "removals")):
            s = stat(case, m)
            if s and (s["max"] != 0 or s["min"] != 0):
                notes.append(f"CHECK: midcomd's {what} counter differs from the cycles the client counted")
    return failed, "; ".join(notes)


# Target (issue 12): midcomd's port mappings at least as fast as miniupnpd's, measured with the same client.
for client, label in (("natpmpc", "Debian natpmpc, a process per request"),
                      ("natpmpload", "natpmpload, one socket, one request at a time")):
    failed, note = problems(client)
    row(f"NAT-PMP mappings created+removed/s, {label}: midcomd ÷ miniupnpd",
        stat(f"midcomd-{client}", "cycles_per_s"), stat(f"miniupnpd-{client}", "cycles_per_s"), "maps/s", 1.0,
        note=note, failed=failed)
    if not failed:
        row(f"  daemon CPU during the loop ÷ cycles ({client}; idle work included): midcomd ÷ miniupnpd",
            stat(f"midcomd-{client}", "cpu_ns_per_cycle"), stat(f"miniupnpd-{client}", "cpu_ns_per_cycle"), "ns",
            higher_is_better=False)

idle_m, idle_u = stat("midcomd", "idle_cpu_ms_per_s"), stat("miniupnpd", "idle_cpu_ms_per_s")
if idle_m is not None and idle_u is not None:
    # Context for the CPU per mapping: what each daemon spends with no request at all (ms of CPU per second).
    rows.append({"fig": 13, "name": "  daemon CPU while idle (its own housekeeping): midcomd vs miniupnpd", "value": idle_m,
                 "reference": idle_u, "ratio": idle_m["median"] / idle_u["median"] if idle_u["median"] else None,
                 "unit": "ms/s", "target": None, "higher_is_better": False, "met": None, "note": ""})


def fmt(x):
    if x is None:
        return "–"
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.2f}G"
    if a >= 1e6:
        return f"{x / 1e6:.2f}M"
    if a >= 1e4:
        return f"{x / 1e3:.1f}k"
    if a >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def cell(s):
    if s is None:
        return "–"
    if s["runs"] > 1 and s["min"] != s["max"]:
        return f"{fmt(s['median'])} [{fmt(s['min'])}–{fmt(s['max'])}]"
    return fmt(s["median"])


lines = ["", "| fig | figure | value median [min–max] | reference median [min–max] | ratio | target | met |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for r in rows:
    if r.get("missing"):
        lines.append(f"| 13 | {r['name']} | – | – | – | – | {r['note']} |")
        continue
    tgt = "–"
    if r["target"] is not None:
        tgt = f"{'≥' if r['higher_is_better'] else '≤'} {r['target']}×"
    met = {True: "yes", False: "NO", None: ""}[r["met"]]
    if r["note"]:
        met = (met + " — " if met else "") + r["note"]
    ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "–"
    lines.append(f"| 13 | {r['name']} | {cell(r['value'])} {r['unit']} | {cell(r['reference'])} | {ratio} | {tgt} | {met} |")
print("\n".join(lines))

latest = json.load(open(out_path))
latest["rows"] = [r for r in latest["rows"] if r.get("fig") != 13] + rows
json.dump(latest, open(out_path, "w"), indent=1)
print(f"\nfigure 13 rows added to: {out_path}")
