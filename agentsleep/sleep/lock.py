"""One sleep per home at a time, across processes."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from ..errors import HomeError, SleepLockedError


@contextmanager
def sleep_lock(home: Path, what: str = "sleep") -> Iterator[None]:
    """Hold <home>/sleep.lock; a second caller gets SleepLockedError naming the holder."""
    lock = FileLock(str(home / "sleep.lock"), timeout=0)
    info_path = home / "sleep.json"
    try:
        lock.acquire()
    except Timeout:
        try:
            info = json.loads(info_path.read_text())
            who = f"pid {info['pid']} ({info['what']} started {time.strftime('%H:%M:%S', time.localtime(info['since']))})"
        except (OSError, ValueError, KeyError):
            who = "another process"
        raise SleepLockedError(f"home {home} is busy: a {what} cannot start while {who} runs; wait for it to finish") from None
    except OSError as e:
        raise HomeError(f"home {home}: cannot take the sleep lock ({e.strerror}); is it read-only?") from None
    try:
        info_path.write_text(json.dumps({"pid": os.getpid(), "what": what, "since": time.time(),
                                         "cmd": " ".join(sys.argv)[:120]}))
        yield
    finally:
        lock.release()
