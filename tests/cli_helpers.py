"""Run the real `agentsleep` command in a subprocess and check its output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)

    def one_line_error(self) -> str:
        lines = [l for l in self.err.splitlines() if l.strip()]
        assert self.code != 0, f"expected failure, got 0: {self.out}"
        assert "Traceback" not in self.err, self.err
        assert len(lines) == 1, f"expected one error line, got:\n{self.err}"
        return lines[0]


def run_cli(*args: str, home=None, stdin: bytes | None = None, env: dict | None = None, timeout: float = 300) -> Result:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    cmd = [sys.executable, "-m", "agentsleep.cli"] + (["--home", str(home)] if home else []) + list(args)
    p = subprocess.run(cmd, input=stdin, capture_output=True, env=e, timeout=timeout)
    return Result(p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace"))
