"""Progress: the bars people watch during a sleep, and the silent default."""
import io

from rich.console import Console

from agentsleep.progress import Progress, StageProgress, silent


def test_stage_progress_draws_one_bar_per_stage():
    out = io.StringIO()
    with StageProgress(console=Console(file=out, width=100, force_terminal=False)) as p:
        p("dream", 3, 12, "writing")
        p("seed", 72, 72, "loss 0.123")
    text = out.getvalue()
    assert "dream" in text and "3/12" in text and "seed" in text and "72/72" in text and "loss 0.123" in text


def test_disabled_progress_and_silent_draw_nothing():
    out = io.StringIO()
    with StageProgress(enabled=False, console=Console(file=out)) as p:
        p("dream", 1, 2)
    assert out.getvalue() == ""
    assert silent("seed", 1, 2, "x") is None
    report: Progress = silent  # any callable with the signature is a Progress
    report("seed", 2, 2)
