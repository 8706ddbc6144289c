#!/usr/bin/env python3
"""Draws the results of scripts/loadtest.sh as two PNGs, from the raw records report.py reads.

  PREFIX.rps.png      req/s per scenario and target
  PREFIX.latency.png  latency added over direct (p50 and p99) per scenario and target
  PREFIX.figures.tsv  the medians drawn, one line per scenario and target

Same runs and arithmetic as report.py: kept runs with status ok; added latency is a target's
percentile minus direct's in the same repetition (direct: the load generator straight to the
nginx origin, no proxy in between); bars are medians over repetitions, whiskers min..max.

Usage: plot.py --raw RESULTS.raw.tsv --meta RESULTS.meta --out-prefix PREFIX
       plot.py --check   (only: can pictures be drawn here?)
Exit status: 0 drawn (or --check: matplotlib found); 1 unusable input (nothing drawn);
3 matplotlib missing (nothing drawn).
"""
import argparse
import math
import os
import statistics
import sys
from collections import OrderedDict

from report import LATENCY_IN_US, TARGET_ORDER, num, parse_kv_line

MISSING_MATPLOTLIB = 3
INSTALL_HINT = "apt-get install python3-matplotlib (or: scripts/install-deps.sh python3-matplotlib)"
SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-matplotlib is importable
TARGET_COLORS = {
    "direct": "#8c8c8c",
    "nginx": "#2ca02c",
    "haproxy": "#9467bd",
    "cp-nocapture": "#1f77b4",
    "cp-file": "#ff7f0e",
    "cp-kafka": "#d62728",
    "cp-kafka-slow": "#8c564b",
}
P50_COLOR, P99_COLOR = "#1f77b4", "#ff7f0e"


class InputError(Exception):
    pass


def load(raw_path, meta_path):
    meta = {}
    with open(meta_path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    runs = []
    with open(raw_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = parse_kv_line(line)
            missing = [k for k in ("scenario", "rep", "target", "kept", "status") if k not in r]
            if missing:
                raise InputError(f"{raw_path} line {n}: no {', '.join(missing)} field")
            runs.append(r)
    return meta, runs


def figures(runs):
    """{(scenario, kind): {target: {"rps", "p50_us", "p99_us": per-repetition values,
    "failed": failed runs}}} for the kept runs, panels and targets in the report's order."""
    per_panel = OrderedDict()  # (scenario, kind) -> rep -> target -> record
    failed = {}  # (scenario, kind or "" for a run that failed before its first phase, target) -> n
    for r in runs:
        if r["kept"] != "1":
            continue
        scn, kind, t = r["scenario"], r.get("kind", ""), r["target"]
        if r["status"] == "ok":
            per_panel.setdefault((scn, kind), {}).setdefault(r["rep"], {})[t] = r
        else:
            failed[(scn, kind, t)] = failed.get((scn, kind, t), 0) + 1
    for scn, kind, t in failed:  # a scenario where every run failed still gets its panel
        if not any(s == scn for s, _ in per_panel):
            per_panel[(scn, kind)] = {}
    out = OrderedDict()
    for (scn, kind), per_rep in per_panel.items():
        seen = {t for d in per_rep.values() for t in d} | {t for s, _, t in failed if s == scn}
        targets = [t for t in TARGET_ORDER if t in seen] + sorted(seen - set(TARGET_ORDER))
        panel = OrderedDict()
        for t in targets:
            v = {"rps": [], "p50_us": [], "p99_us": []}
            v["failed"] = failed.get((scn, kind, t), 0) + (failed.get((scn, "", t), 0) if kind else 0)
            for d in per_rep.values():
                r = d.get(t)
                if r is None:
                    continue
                if num(r, "rps") is not None:
                    v["rps"].append(num(r, "rps"))
                base = d.get("direct")
                if t == "direct" or not num(r, "req") or base is None or not num(base, "rps"):
                    continue  # no request completed, or no direct run to compare with
                for q in ("p50_us", "p99_us"):
                    a, b = num(r, q), num(base, q)
                    if a is not None and b is not None:
                        v[q].append(a - b)
            panel[t] = v
        out[(scn, kind)] = panel
    if not out:
        raise InputError("no kept run in the raw records: nothing to draw")
    return out


def median(values):
    return statistics.median(values) if values else None


def panel_title(scn, kind):
    return f"{scn} {kind}" if kind else scn


def run_title(meta):
    date = meta.get("date", "?")
    if len(date) == 17:  # 2026-11-26-071053
        date = f"{date[:10]} {date[11:13]}:{date[13:15]}:{date[15:]}"
    label = meta.get("label") or (f"commit {meta['commit']}" if meta.get("commit") else "")
    machine = ", ".join(
        x for x in (
            f"{meta['nproc']} CPUs" if meta.get("nproc") else "",
            meta.get("cpu_model", ""),
            meta.get("memory", ""),
            meta.get("kernel", ""),
        ) if x
    )
    return f"capture-proxy load test, {date}" + (f" ({label})" if label else "") + (
        f"\n{machine}" if machine else ""
    )


def whiskers(values, med):
    return [[med - min(values)], [max(values) - med]]


def grid(plt, n, title, note):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows + 1.3), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12)
    fig.supxlabel(note, fontsize=8.5, color="#444444")
    return fig, list(axes.flat[:n])


def label_bar(ax, x, med, text):
    ax.annotate(text, (x, med), xytext=(0, 2 if med >= 0 else -2), textcoords="offset points",
                ha="center", va="bottom" if med >= 0 else "top", fontsize=7)


def short(v):
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def draw_rps(plt, figs, title, path):
    fig, axes = grid(plt, len(figs), title + "\nthroughput per scenario (median, whiskers min–max over repetitions)",
                     "req/s: responses ÷ measured window. A missing bar: the target failed (marked) "
                     "or was not run in that scenario.")
    for ax, ((scn, kind), panel) in zip(axes, figs.items()):
        names = list(panel)
        for i, t in enumerate(names):
            vals = panel[t]["rps"]
            if not vals:
                ax.text(i, 0, "failed" if panel[t]["failed"] else "n/a", ha="center", va="bottom",
                        rotation=90, fontsize=8, color="#b00000")
                continue
            med = median(vals)
            ax.bar(i, med, color=TARGET_COLORS.get(t, "#7f7f7f"), yerr=whiskers(vals, med),
                   capsize=3, ecolor="#333333")
            n_failed = panel[t]["failed"]
            label_bar(ax, i, max(vals), short(med) + (f"\n{n_failed} failed" if n_failed else ""))
        ax.set_title(panel_title(scn, kind), fontsize=10)
        ax.set_ylabel("requests/s")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8.5)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the value labels
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_latency(plt, figs, title, path):
    fig, axes = grid(plt, len(figs), title + "\nlatency added over direct (median, whiskers min–max over repetitions)",
                     "added = target's percentile − direct's (wrk straight to the nginx origin) in the same "
                     "repetition; below 0: faster than direct. n/a: no direct run or no completed request.")
    for ax, ((scn, kind), panel) in zip(axes, figs.items()):
        unit, scale = ("µs", 1) if scn in LATENCY_IN_US else ("ms", 1000)
        names = [t for t in panel if t != "direct"]
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8.5)
        ax.set_title(panel_title(scn, kind), fontsize=10)
        if not any(panel[t]["p50_us"] or panel[t]["p99_us"] for t in names):
            ax.text(0.5, 0.5, "added latency n/a:\nno direct run, or no request completed",
                    transform=ax.transAxes, ha="center", va="center", fontsize=9, color="#b00000")
            ax.set_yticks([])
            ax.set_xlim(-0.6, len(names) - 0.4)
            continue
        width = 0.38
        for i, t in enumerate(names):
            for j, (q, color) in enumerate((("p50_us", P50_COLOR), ("p99_us", P99_COLOR))):
                x = i + (j - 0.5) * width
                vals = [v / scale for v in panel[t][q]]
                if not vals:
                    ax.text(x, 0, "failed" if panel[t]["failed"] else "n/a", ha="center", va="bottom",
                            rotation=90, fontsize=7, color="#b00000")
                    continue
                med = median(vals)
                ax.bar(x, med, width, color=color, yerr=whiskers(vals, med), capsize=2, ecolor="#333333")
                label_bar(ax, x, max(vals) if med >= 0 else min(vals), f"{med:+.{0 if scale == 1 else 2}f}")
        ax.axhline(0, color="#333333", linewidth=0.8)
        ax.set_ylabel(f"added latency ({unit})")
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)  # room for the value labels
    keys = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (P50_COLOR, P99_COLOR)]
    axes[0].legend(keys, ["added p50", "added p99"], loc="best", fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_tsv(figs, path):
    def cell(v):
        return "" if v is None else f"{v:.1f}"

    with open(path, "w") as f:
        f.write("scenario\tkind\ttarget\truns\tfailed\trps\tadded_p50_us\tadded_p99_us\n")
        for (scn, kind), panel in figs.items():
            for t, v in panel.items():
                f.write("\t".join([scn, kind, t, str(len(v["rps"])), str(v["failed"]),
                                   cell(median(v["rps"])), cell(median(v["p50_us"])),
                                   cell(median(v["p99_us"]))]) + "\n")


def pyplot_or_none():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw")
    ap.add_argument("--meta")
    ap.add_argument("--out-prefix", help="writes PREFIX.rps.png, PREFIX.latency.png, PREFIX.figures.tsv")
    ap.add_argument("--check", action="store_true", help="exit 0 if matplotlib is found, 3 if not")
    args = ap.parse_args()
    if not args.check and not (args.raw and args.meta and args.out_prefix):
        ap.error("--raw, --meta and --out-prefix are required (or --check)")

    plt = pyplot_or_none()
    if plt is None:
        # Debian's python3-matplotlib is importable from the system python3 only; the python3
        # first on PATH may be another one (pyenv, a venv).
        here = os.path.realpath(sys.executable)
        if os.path.exists(SYSTEM_PYTHON) and os.path.realpath(SYSTEM_PYTHON) != here:
            os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, *sys.argv])
        print(f"plot: pictures skipped: matplotlib is not installed for {sys.executable}; "
              f"install it with: {INSTALL_HINT}", file=sys.stderr)
        return MISSING_MATPLOTLIB
    if args.check:
        return 0
    try:
        meta, runs = load(args.raw, args.meta)
        figs = figures(runs)
    except (OSError, InputError) as e:
        print(f"plot: ERROR: {e}", file=sys.stderr)
        return 1
    title = run_title(meta)
    os.makedirs(os.path.dirname(os.path.abspath(args.out_prefix)), exist_ok=True)
    draw_rps(plt, figs, title, args.out_prefix + ".rps.png")
    draw_latency(plt, figs, title, args.out_prefix + ".latency.png")
    write_tsv(figs, args.out_prefix + ".figures.tsv")
    print(f"plot: wrote {args.out_prefix}.rps.png, {args.out_prefix}.latency.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
