"""The self-contained HTML audit report: tables plus plots embedded as base64 PNG.

Plots are drawn with matplotlib's Agg canvas (no pyplot, no global backend change, no display).
The page references no external resource and needs no JavaScript. Every plot in :data:`PLOTS`
is always present; a plot without data says why it is empty.

This module imports nothing else of SafeTwin's outside the safety package.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from .audit import Report

PLOTS = {
    "curves": "Episode return and safety cost over training",
    "lambda": "Lagrange multiplier over training",
    "cost_categories": "Safety cost per category (mean per episode)",
    "corrections": "Safety-filter corrections",
    "latency": "Latency",
    "estop_timeline": "E-stop and stop timeline",
}
"""Plot id -> title; the HTML has one ``<figure id="plot-<id>">`` per entry."""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _empty(ax: Any, why: str) -> None:
    ax.text(0.5, 0.5, f"no data: {why}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_curves(ax: Any, r: Report) -> None:
    tr = r.series.get("training") or {}
    if not tr.get("step"):
        _empty(ax, "no training metrics (metrics.jsonl) in this run")
        return
    ax.plot(tr["step"], tr["charts/episode_return"], label="episode return", color="tab:blue")
    ax.set_xlabel("environment step")
    ax.set_ylabel("return")
    ax2 = ax.twinx()
    ax2.plot(tr["step"], tr["safety/episode_cost"], label="episode cost", color="tab:red")
    ax2.plot(tr["step"], tr["safety/cost_limit"], "--", label="cost limit", color="tab:red", alpha=0.6)
    ax2.set_ylabel("cost per episode")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)


def _plot_lambda(ax: Any, r: Report) -> None:
    tr = r.series.get("training") or {}
    if not tr.get("step") or all(math.isnan(v) for v in tr["safety/lambda"]):
        _empty(ax, "no Lagrange multiplier logged (safety/lambda)")
        return
    ax.plot(tr["step"], tr["safety/lambda"], color="tab:purple")
    ax.set_xlabel("environment step")
    ax.set_ylabel("lambda")


def _plot_categories(ax: Any, r: Report) -> None:
    modes = [m for m in ("raw", "filtered") if isinstance(r.metrics.get(m), Mapping)]
    cats = sorted({c for m in modes for c in r.metrics[m]["safety_cost"]["per_category_mean"]})
    if not cats:
        _empty(ax, "no per-category costs (evaluation episodes) in this run")
        return
    x = np.arange(len(cats))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        per = r.metrics[mode]["safety_cost"]["per_category_mean"]
        ax.bar(x + i * width, [per.get(c, 0.0) for c in cats], width, label=mode)
    ax.set_xticks(x + width * (len(modes) - 1) / 2, cats)
    ax.set_ylabel("cost per episode")
    ax.legend(fontsize=8)


def _plot_corrections(ax: Any, r: Report) -> None:
    if r.kind == "deploy":
        values = [v for v in r.series.get("corrections", []) if v is not None]
        if not values:
            _empty(ax, "no telemetry")
            return
        ax.hist(values, bins=30, color="tab:orange")
        ax.set_xlabel("filter correction norm per control period (rad/s)")
    else:
        eps = [e for e in r.series.get("episodes", []) if e["mode"] == "filtered"]
        if not eps:
            _empty(ax, "no filtered evaluation episodes")
            return
        ax.hist([float(e.get("filter_interventions", 0)) for e in eps], bins=20, color="tab:orange")
        ax.set_xlabel("filter interventions per episode (filtered mode)")
    ax.set_ylabel("count")


def _plot_latency(ax: Any, r: Report) -> None:
    if r.kind == "deploy":
        values = [float(v) for v in r.series.get("periods", []) if v is not None]
        label = "control-loop period (ms)"
    else:
        values = [float(v) for e in r.series.get("episodes", []) for v in e.get("inference_latency_ms") or []]
        label = "policy inference latency (ms)"
    if not values:
        _empty(ax, f"no {label} recorded")
        return
    ax.hist(values, bins=30, color="tab:green")
    for q, style in ((50, "--"), (99, ":")):
        ax.axvline(float(np.percentile(values, q)), color="k", linestyle=style, label=f"p{q}")
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)


def _plot_timeline(ax: Any, r: Report) -> None:
    stops = [s for s in r.stops if s.get("t_mono") is not None]
    t = [v for v in r.series.get("t_mono", []) if v is not None]
    if not stops and not t:
        _empty(ax, "no stops and no telemetry timeline (training-run audit)" if r.kind == "train"
               else "no telemetry and no stops recorded")
        return
    if t:
        ax.axhspan(-0.2, 0.2, xmin=0, xmax=1, color="0.9")
        ax.plot([min(t), max(t)], [0, 0], color="tab:blue", lw=6, alpha=0.4, label="run (telemetry)")
    for i, s in enumerate(stops):
        ax.axvline(float(s["t_mono"]), color="tab:red")
        ax.annotate(f"{s['event']}: {s['cause']}", (float(s["t_mono"]), 0.25 + 0.15 * (i % 4)), fontsize=7,
                    color="tab:red")
    ax.set_ylim(-0.5, 1.0)
    ax.set_yticks([])
    ax.set_xlabel("monotonic time (s)")
    ax.set_title(f"{len(r.stops)} stop(s)", fontsize=9)


_DRAW: dict[str, Callable[[Any, Report], None]] = {
    "curves": _plot_curves, "lambda": _plot_lambda, "cost_categories": _plot_categories,
    "corrections": _plot_corrections, "latency": _plot_latency, "estop_timeline": _plot_timeline}


def render_plots(report: Report) -> dict[str, str]:
    """``{plot id: base64 PNG}`` for every plot in :data:`PLOTS`."""
    out = {}
    for pid, title in PLOTS.items():
        fig = Figure(figsize=(6.4, 3.2), dpi=80, layout="constrained")
        ax = fig.add_subplot()
        ax.set_title(title, fontsize=10, loc="left")
        _DRAW[pid](ax, report)
        out[pid] = _png(fig)
    return out


# ---------------------------------------------------------------- HTML
_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;
font-size:13px;text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#eee}.PASS,.passed{background:#d8f5d0}
.FAIL,.failed{background:#f8d0d0}.skipped,.not{background:#f4f0d0}figure{display:inline-block;margin:4px}
.PASS td:nth-child(3),.FAIL td:nth-child(3){white-space:nowrap}.verdict{font-size:1.6em;padding:0.3em 0.6em;display:inline-block}.claims{border-left:4px solid #888;
padding-left:1em}code{font-size:12px}"""


def _e(value: Any) -> str:
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class=\"{_e(classes[i]) if classes else ''}\">" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(obj: Any, prefix: str = "") -> list[list[Any]]:
    if isinstance(obj, Mapping):
        rows = []
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if isinstance(obj, list) and len(obj) > 12:
        return [[prefix, f"{len(obj)} items: {obj[:12]} ..."]]
    return [[prefix, obj]]


def render_html(report: Report) -> str:
    """The complete HTML document of ``report`` (self-contained, no scripts)."""
    data = report.to_dict()
    reqs = data["requirements"]
    plots = render_plots(report)
    figures = "".join(
        f'<figure id="plot-{pid}"><img alt="{_e(PLOTS[pid])}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_e(PLOTS[pid])}</figcaption></figure>" for pid, b64 in plots.items())
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>SafeTwin audit: {_e(report.verdict)} ({_e(report.kind)} run)</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>SafeTwin safety audit ({_e(report.kind)} run)</h1>",
        f"<p><code>{_e(report.run_dir)}</code></p>",
        f'<p id="verdict" class="verdict {_e(report.verdict)}">{_e(report.verdict)}: '
        f"{sum(r['status'] == 'PASS' for r in reqs)}/{len(reqs)} requirements pass</p>",
        f'<p class="claims" id="claims">{_e(report.claims)}</p>',
        "<h2>Findings</h2><ul>" + "".join(f"<li>{_e(f)}</li>" for f in data["findings"]) + "</ul>",
        "<h2>Requirements</h2>",
        _table(["id", "requirement", "status", "measured", "limit", "unit", "limit source", "evidence"],
               [[r["id"], r["name"], r["status"], r["measured"],
                 "" if r["comparator"] == "is" else f"{r['comparator']} {r['limit']}",
                 r["unit"], r["source"], r["evidence"]] for r in reqs], [r["status"] for r in reqs]),
        "<h2>Plots</h2>", figures,
        "<h2>Metrics</h2>", _table(["metric", "value"], _flatten(data["metrics"])),
        "<h2>Provenance (F1)</h2>",
        _table(["field", "value"], _flatten({**data["provenance"], "checkpoint_sha256": data["checkpoint_sha256"],
                                             "safety_spec_sha256": data["safety_spec_sha256"],
                                             "spec_source": data["spec_source"]})),
        "<h2>Integrity</h2>", _table(["field", "value"], _flatten(data["integrity"])),
        f"<h2>Stops ({len(data['stops'])})</h2>",
        _table(["event", "seq", "t_mono (s)", "cause", "category", "T_stop (s)"],
               [[s["event"], s["seq"], s["t_mono"], s["cause"], s["category"], s["t_stop_s"]]
                for s in data["stops"]]),
        "<h2>Safety scenarios A1-F3</h2>",
        _table(["id", "status", "tests"],
               [[s["id"], s["status"], "; ".join(f"{t['test']}: {t['outcome']}" for t in s["tests"])]
                for s in data["scenarios"]], [str(s["status"]).split()[0] for s in data["scenarios"]]),
        "<h2>Audit configuration</h2>", _table(["field", "value"], _flatten(data["config"])),
        f"<p>schema {_e(data['schema_version'])}</p></body></html>",
    ]
    return "\n".join(parts)
