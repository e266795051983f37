"""A long-running assistant that remembers every turn and consolidates at night.

    python examples/overnight_assistant.py --home ~/.agentsleep/assistant
    python examples/overnight_assistant.py --cron "*/10 * * * *" --idle-minutes 5   # sleep more often

The assistant is the episode store's only writer (it remembers each user
turn); an in-process consolidation daemon watches the same home and puts it
to sleep on its triggers: nightly cron, a threshold of waiting episodes, idle
time, or on demand (type `/sleep`). The sleep itself runs in a worker
process, so the chat stays responsive, and every answer after a promoted
sleep comes from the new model version (Home.ask follows CURRENT).

Commands: `/sleep` (ask the daemon to sleep now), `/status`, `/closed <q>`
(answer from the weights alone), `/quit`. Anything else is a chat turn.
Pass --script FILE to read turns from a file instead of stdin.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agentsleep.home import Home

try:
    from agentsleep.daemon import Daemon, daemon_status, submit_request, wait_request
except ModuleNotFoundError:  # an install that does not map daemon/ yet
    from agentsleep.cli import load_daemon

    _d = load_daemon()
    Daemon, daemon_status, submit_request, wait_request = (_d.Daemon, _d.daemon_status, _d.submit_request,
                                                           _d.wait_request)


def configure(home: Home, args: argparse.Namespace) -> None:
    """Trigger settings from the command line win over config.toml for this run."""
    upd = {}
    if args.cron is not None:
        upd["cron"] = args.cron
    if args.threshold is not None:
        upd["threshold_episodes"] = args.threshold
    if args.idle_minutes is not None:
        upd["idle_minutes"] = args.idle_minutes
    if upd:
        cfg = home.config.model_copy(deep=True)
        cfg.daemon = cfg.daemon.model_copy(update=upd)
        import tomli_w

        (home.root / "config.toml").write_text(tomli_w.dumps(cfg.to_toml_dict()), encoding="utf-8")
        home.config = cfg


def chat(home: Home, daemon: Daemon, lines, out=sys.stdout) -> None:
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line == "/quit":
            break
        if line == "/status":
            s = daemon_status(home.root, count_waiting=False)
            say(json.dumps({k: s.get(k) for k in ("triggers", "running", "waiting", "last_sleep", "health")},
                           default=str, indent=1))
            continue
        if line == "/sleep":
            rid = submit_request(home.root, by="overnight_assistant")
            if rid is None:
                say("the daemon did not take the request")
                continue
            say("sleeping... (the chat keeps working; answers switch to the new version when it is promoted)")
            res = wait_request(home.root, rid, timeout=None)
            say(f"sleep {res.get('sleep_id') or ''}: {res.get('status')} -> serving {res.get('version') or '?'}"
                + (f" ({res['error']})" if res.get("error") else ""))
            continue
        closed = line.startswith("/closed ")
        question = line[len("/closed "):] if closed else line
        if not closed:
            home.remember(question, kind="turn", source="user", session="overnight-assistant")
        r = home.ask(question, use_memory=not closed)
        say(f"[{r['model_version']}] {r['answer']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default=None, help="agent home (default $AGENTSLEEP_HOME or ~/.agentsleep/default)")
    ap.add_argument("--cron", default=None, help='crontab for the nightly sleep (default from config: "0 3 * * *")')
    ap.add_argument("--threshold", type=int, default=None, help="sleep when this many episodes wait")
    ap.add_argument("--idle-minutes", type=float, default=None, help="sleep after this long without a new turn")
    ap.add_argument("--script", type=Path, default=None, help="read turns from this file instead of stdin")
    args = ap.parse_args(argv)

    home = Home.open(args.home)                 # writable: the assistant is the store's one writer
    configure(home, args)
    # The daemon counts waiting episodes through the assistant's own store handle
    # (one Chroma client per process) and runs each sleep in a worker process.
    store = home.store

    def probe(root: Path):
        eps = [e for e in store.list(unconsolidated_only=True)
               if e.trust == "trusted" or home.config.sleep.consolidate_untrusted]
        return len(eps), max((e.created_at.timestamp() for e in eps), default=None)

    daemon = Daemon([home.root], probe_fn=probe, heartbeat_s=5.0).start()
    st = daemon.status()
    print(f"assistant on {home.root} (model {home.current_version().name}); next sleep "
          f"{st['triggers']['next_cron'] or 'on threshold/idle/demand only'}; logs: {st['log']}", file=sys.stderr)
    try:
        if args.script:
            with open(args.script, encoding="utf-8") as f:
                chat(home, daemon, f)
        else:
            chat(home, daemon, sys.stdin)
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()                            # a running sleep aborts cleanly; CURRENT is untouched
        home.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
