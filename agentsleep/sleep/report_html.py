"""`report.html`: one sleep, for people. Written next to report.json by the journal.

One self-contained page (plots are inline PNGs drawn with matplotlib, no scripts, no
external links), so it opens from disk, from the dashboard, or as an e-mail
attachment alike: episodes consolidated and held back (with the reason), the dreams
kept and dropped (with examples), probe recall before and after, the loss curve
(or the final losses when no per-step curve was recorded), stage timings and peak
memory, drift, and the gate's verdict.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:bold}
.promoted{background:#2e7d32}.rejected{background:#b26a00}.failed,.interrupted,.aborted{background:#b71c1c}
.plots img{max-width:480px;border:1px solid #eee;margin:4px}.muted{color:#777}code{font-size:12px}"""


def _e(x: Any) -> str:
    return html.escape("-" if x is None else str(x))


def _num(x: Any, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else _e(x)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def loss_curve(metrics: dict[str, Any]) -> dict[str, list[float]]:
    """Per-step losses when the sleep recorded them (metrics.loss_curve: a list, or name -> list)."""
    c = metrics.get("loss_curve")
    if isinstance(c, list):
        return {"total": [float(v) for v in c if isinstance(v, (int, float))]}
    if isinstance(c, dict):
        return {k: [float(v) for v in vs if isinstance(v, (int, float))] for k, vs in c.items() if isinstance(vs, list)}
    return {}


def plots(rep: dict[str, Any]) -> dict[str, str]:
    """name -> base64 PNG. Each plot is drawn only from data the report has."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = rep.get("metrics") or {}
    out: dict[str, str] = {}
    curve = {k: v for k, v in loss_curve(m).items() if v}
    if curve:
        fig, ax = plt.subplots(figsize=(6, 3))
        for k, v in curve.items():
            ax.plot(range(1, len(v) + 1), v, label=k)
        ax.set(xlabel="step", ylabel="loss", title="training loss")
        ax.legend()
        out["loss"] = _png(fig)
    elif isinstance(m.get("seed_loss"), dict) and m["seed_loss"]:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(m["seed_loss"])
        ax.bar(names, [float(m["seed_loss"][k] or 0) for k in names], color="#5c6bc0")
        ax.set(ylabel="loss", title=f"final training losses ({m.get('seed_steps', '?')} steps; no per-step curve)")
        out["loss"] = _png(fig)
    pairs = [(lbl, m.get(b), m.get(a)) for lbl, b, a in (("this sleep's probes", "recall_before", "recall_after"),
                                                         ("earlier probes", "earlier_before", "earlier_after"))]
    pairs = [(lbl, b, a) for lbl, b, a in pairs if isinstance(b, (int, float)) or isinstance(a, (int, float))]
    if pairs:
        fig, ax = plt.subplots(figsize=(6, 3))
        xs = range(len(pairs))
        ax.bar([x - 0.2 for x in xs], [b or 0 for _, b, _ in pairs], width=0.4, label="before", color="#90a4ae")
        ax.bar([x + 0.2 for x in xs], [a or 0 for _, _, a in pairs], width=0.4, label="after", color="#43a047")
        ax.set_xticks(list(xs), [p[0] for p in pairs])
        ax.set(ylim=(0, 1.05), ylabel="recall", title="probe recall before and after")
        ax.legend()
        out["recall"] = _png(fig)
    timings = {k: float(v) for k, v in (rep.get("timings") or {}).items() if k != "total" and isinstance(v, (int, float))}
    if timings:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(list(timings), list(timings.values()), color="#8d6e63")
        ax.set(ylabel="seconds", title="stage timings and peak memory")
        peak = m.get("peak_rss_mb") if isinstance(m.get("peak_rss_mb"), dict) else {}
        if peak:
            ax2 = ax.twinx()
            ax2.plot([k for k in timings if k in peak], [peak[k] for k in timings if k in peak], "o-", color="#c62828")
            ax2.set_ylabel("peak RSS (MB)")
        out["stages"] = _png(fig)
    d = rep.get("dreams") or {}
    dropped = {k: v for k, v in (d.get("dropped") or {}).items() if isinstance(v, (int, float)) and v}
    if d.get("written") or dropped:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = ["written", "trained", *dropped]
        vals = [d.get("written") or 0, d.get("trained") or 0, *dropped.values()]
        ax.barh(names[::-1], vals[::-1], color=["#ef9a9a"] * len(dropped) + ["#66bb6a", "#42a5f5"])
        ax.set(xlabel="dreams", title="dreams written, trained and dropped (why)")
        out["dreams"] = _png(fig)
    return out


def _dream_rows(sleep_dir: Path, limit: int = 12) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Some kept dreams (question, answer, episode) and how many each episode got."""
    f = sleep_dir / "dreams.jsonl"
    rows: list[dict[str, Any]] = []
    per: dict[str, int] = {}
    if not f.is_file():
        return rows, per
    for line in f.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        per[d.get("episode_id", "?")] = per.get(d.get("episode_id", "?"), 0) + 1
        if len(rows) < limit and not d.get("replay"):
            rows.append(d)
    return rows, per


def render(rep: dict[str, Any], sleep_dir: Path) -> str:
    """The page's HTML for the report dict `rep` (report.json's content)."""
    m = rep.get("metrics") or {}
    status = str(rep.get("status", "?"))
    when = rep.get("finished_at") or rep.get("started_at")
    when_s = datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S") if isinstance(when, (int, float)) and when else "-"
    p = plots(rep)
    dream_rows, per_ep = _dream_rows(sleep_dir)
    h: list[str] = [f"<!doctype html><html><head><meta charset='utf-8'><title>sleep {_e(rep.get('sleep_id'))}</title>"
                    f"<style>{_CSS}</style></head><body>",
                    f"<h1>Sleep {_e(rep.get('sleep_id'))}</h1>",
                    f"<p><span class='verdict {_e(status)}' id='verdict'>{_e(status)}</span> "
                    f"{_e(rep.get('parent_version'))} &rarr; serving <b>{_e(rep.get('version'))}</b>; "
                    f"{len(rep.get('episodes') or [])} episodes; {_num(rep.get('duration_s'), 0)} s; finished {when_s}</p>"]
    h.append("<h2>Gate verdict</h2><ul>" + "".join(f"<li>{_e(r)}</li>" for r in rep.get("reasons") or []) + "</ul>")
    failed = m.get("gate_failed") or []
    h.append("<table><tr><th>metric</th><th>value</th></tr>"
             + "".join(f"<tr><td>{_e(k)}</td><td>{_num(m.get(k))}</td></tr>" for k in
                       ("recall_before", "recall_after", "recall_gain", "earlier_before", "earlier_after", "retention",
                        "drift_kl", "probes", "probes_trusted", "probes_cloze", "probes_dropped") if k in m)
             + (f"<tr><td>gate failed on</td><td>{_e(', '.join(map(str, failed)))}</td></tr>" if failed else "")
             + "</table>")
    if p:
        h.append("<h2>Plots</h2><div class='plots'>" + "".join(
            f"<img class='plot' id='plot-{k}' alt='{k}' src='data:image/png;base64,{v}'>" for k, v in p.items()) + "</div>")
    h.append("<h2>Episodes consolidated</h2>")
    eps = rep.get("episodes") or []
    h.append("<table><tr><th>episode</th><th>dreams kept</th></tr>" + "".join(
        f"<tr><td><code>{_e(e)}</code></td><td>{per_ep.get(e, 0)}</td></tr>" for e in eps) + "</table>"
             if eps else "<p class='muted'>none</p>")
    h.append("<h2>Episodes held back</h2>")
    ex = rep.get("excluded") or {}
    rows = [(why, e) for why, ids in ex.items() for e in (ids or [])]
    h.append("<table><tr><th>episode</th><th>why</th></tr>" + "".join(
        f"<tr><td><code>{_e(e)}</code></td><td>{_e(why)}</td></tr>" for why, e in rows) + "</table>"
             if rows else "<p class='muted'>none</p>")
    d = rep.get("dreams") or {}
    h.append(f"<h2>Dreams</h2><p>written {_e(d.get('written'))}, trained {_e(d.get('trained'))}, "
             f"rehearsed {_e(d.get('rehearsed'))}"
             + (f", earlier questions held to the parent's answers {_e(d['retained'])}" if d.get("retained") else "")
             + "; dropped: "
             + (", ".join(f"{_e(k)} {_e(v)}" for k, v in (d.get("dropped") or {}).items() if v) or "none") + "</p>")
    if dream_rows:
        h.append("<table><tr><th>question</th><th>answer</th><th>episode</th></tr>" + "".join(
            f"<tr><td>{_e(r.get('question'))}</td><td>{_e(r.get('answer'))}</td><td><code>{_e(r.get('episode_id'))}</code></td></tr>"
            for r in dream_rows) + "</table>")
    samples = m.get("sample_answers") or []
    if samples:
        h.append("<h2>Probe answers after the sleep</h2><table><tr><th>question</th><th>expected</th><th>answered</th></tr>"
                 + "".join(f"<tr><td>{_e(s.get('q'))}</td><td>{_e(s.get('gold'))}</td><td>{_e(s.get('pred'))}</td></tr>"
                           for s in samples if isinstance(s, dict)) + "</table>")
    t = rep.get("timings") or {}
    peak = m.get("peak_rss_mb") if isinstance(m.get("peak_rss_mb"), dict) else {}
    if t:
        h.append("<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>peak RSS (MB)</th></tr>" + "".join(
            f"<tr><td>{_e(k)}</td><td>{_num(v, 1)}</td><td>{_num(peak.get(k), 0)}</td></tr>" for k, v in t.items()) + "</table>")
    h.append("</body></html>")
    return "\n".join(h)


def write_html(sleep_dir: Path) -> Path | None:
    """Render sleep_dir/report.json into sleep_dir/report.html. Never raises: a report that cannot be
    drawn is logged, and the sleep it describes stands."""
    sleep_dir = Path(sleep_dir)
    try:
        from ..atomic import atomic_write_text

        rep = json.loads((sleep_dir / "report.json").read_text(encoding="utf-8"))
        path = sleep_dir / "report.html"
        atomic_write_text(path, render(rep, sleep_dir))
        return path
    except Exception as e:  # noqa: BLE001 - drawing must never fail a sleep
        log.warning("could not write report.html in %s: %s: %s", sleep_dir, type(e).__name__, e)
        return None
