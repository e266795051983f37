"""report.html: drawn from a sleep's report.json and dreams.jsonl, its plots real PNGs; a report that
cannot be drawn never fails the sleep; `agentsleep report` finds it."""
from __future__ import annotations

import base64
import json
import re
import time

from cli_helpers import run_cli

from agentsleep.sleep.journal import write_report
from agentsleep.sleep.report_html import write_html
from agentsleep.sleep.types import SleepReport, Status


def _report(sid: str = "20261205-010000-abcdef", **metrics) -> SleepReport:
    m = {"probes": 4, "recall_before": 0.25, "recall_after": 0.75, "drift_kl": 0.04, "seed_steps": 3,
         "loss_curve": {"total": [2.0, 1.5, 1.1], "sft": [1.8, 1.2, 0.9]},
         "peak_rss_mb": {"load": 900.0, "dream": 1200.0, "seed": 1500.0}, "gate_failed": [],
         "sample_answers": [{"q": "Who is Maya?", "gold": "Alice's daughter", "pred": "Alice's <b>daughter</b>"}], **metrics}
    return SleepReport(sleep_id=sid, status=Status.PROMOTED, version="v0001", parent_version="v0000",
                       episodes=["ep-1", "ep-2"], metrics=m, reasons=["recall 0.25 -> 0.75"],
                       timings={"load": 1.0, "dream": 5.0, "seed": 9.0, "total": 15.0}, duration_s=15.0,
                       started_at=time.time() - 15, finished_at=time.time(),
                       dreams={"written": 10, "trained": 4, "dropped": {"ungrounded": 5, "duplicate": 1}},
                       excluded={"untrusted": ["ep-3"]})


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def test_every_written_report_gets_its_page(tmp_path):
    d = tmp_path / "sleeps" / "s1"
    d.mkdir(parents=True)
    (d / "dreams.jsonl").write_text(json.dumps({"episode_id": "ep-1", "question": "Who is Maya?", "answer": "Alice's daughter",
                                                "replay": False}) + "\n")
    write_report(d, _report())
    page = (d / "report.html").read_text()
    for shown in ("v0000", "v0001", "promoted", "ep-3", "untrusted", "Who is Maya?", "ungrounded", "0.750", "0.040"):
        assert shown in page, shown
    assert "<b>daughter</b>" not in page  # model output is escaped, never markup
    assert "http" not in page  # self-contained: nothing fetched from anywhere
    pngs = _pngs(page)
    assert len(pngs) == 4 and all(p.startswith(b"\x89PNG") and len(p) > 1000 for p in pngs)
    assert "id='plot-loss'" in page


def test_a_page_that_cannot_be_drawn_never_fails_the_sleep(tmp_path, caplog):
    d = tmp_path / "s2"
    d.mkdir()
    (d / "report.json").write_text("{not json")
    assert write_html(d) is None and not (d / "report.html").exists()
    assert "could not write report.html" in caplog.text
    # a report with almost nothing in it (a sleep killed early) still gets a page
    write_report(d, SleepReport(sleep_id="s2", status=Status.INTERRUPTED, version="v0000", parent_version="v0000",
                                episodes=[], reasons=["interrupted"]))
    assert "interrupted" in (d / "report.html").read_text()


def test_report_command(tmp_path):
    home = tmp_path / "h"
    bad = run_cli("report", "latest", home=tmp_path / "nowhere")
    assert "does not exist" in bad.one_line_error()
    (home / "sleeps").mkdir(parents=True)
    assert "no sleep" in run_cli("report", home=home).one_line_error()
    older, newer = home / "sleeps" / "20261201-000000-aaaaaa", home / "sleeps" / "20261202-000000-bbbbbb"
    for d in (older, newer):
        d.mkdir()
        write_report(d, _report(d.name))
    assert run_cli("report", "--json", home=home).json()["report"] == str(newer / "report.html")
    assert run_cli("report", older.name, home=home).out.strip() == str(older / "report.html")
    (older / "report.html").unlink()  # a sleep from before report.html existed: drawn on demand
    assert run_cli("report", older.name, "--json", home=home).json()["sleep_id"] == older.name
    assert (older / "report.html").is_file()
    assert run_cli("report", "../etc", home=home).code == 2
