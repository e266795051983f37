"""Parse the CLI's everyday commands without building typer's validators.

typer (0.26 and later) builds a pydantic TypeAdapter for every parameter of the command being
run, and importing pydantic's validation layer for that costs about 0.1 s: a third of a
`remember` or `recall` that a running `agentsleep serve` answers. For the handful of commands
that must answer at once, `parse` reads the same typer declarations (the `typer.Option` /
`typer.Argument` defaults of the command's function) and binds argv to them directly.

It handles only what those commands use: options and arguments of type str, int, float or bool
(or Optional of one), flags, `--name=value`, `--` and the global `--home`. Anything else
(an unknown option, `--help`, a value that does not convert or is out of range, a feature such
as callbacks or envvars on an option) returns None, and typer parses the command as usual, with
its own messages. tests/test_quickargs.py checks that both parsers give the same values.
"""
from __future__ import annotations

import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

SIMPLE = (str, int, float, bool)  # (a Path option's checks - exists, dir_okay... - are typer's: it parses those)
# typer features this parser does not implement: a parameter using one goes through typer
UNSUPPORTED = ("callback", "is_eager", "envvar", "parser", "click_type", "default_factory", "prompt", "count",
               "exists", "resolve_path", "clamp", "flag_value", "is_flag", "autocompletion", "shell_complete")


class _RequiredArgument:
    """A parameter declared without a default (typer: a required positional argument)."""

    default = ...
    param_decls = None


class _Param:
    """One parameter of a command: its name, type, typer declaration and how argv names it."""

    def __init__(self, name: str, kind: type, info: Any):
        self.name, self.kind, self.info = name, kind, info
        self.argument = type(info).__name__ in ("ArgumentInfo", "_RequiredArgument")
        self.flags: dict[str, bool] = {}  # for bool options: spelling -> value
        self.names: list[str] = []  # for other options: the spellings that take a value
        if self.argument:
            return
        decls = list(info.param_decls or []) or ["--" + name.replace("_", "-")]
        for d in decls:
            on, _, off = d.partition("/")
            if kind is bool:
                self.flags[on.strip()] = True
                if off:
                    self.flags[off.strip()] = False
            else:
                self.names.append(on.strip())
        if kind is bool and not any("/" in d for d in decls) and not info.param_decls:
            self.flags["--no-" + name.replace("_", "-")] = False  # typer's implicit --x/--no-x

    def convert(self, raw: str) -> Any:
        if self.kind in (int, float) and not raw.isascii():
            raise ValueError("non-ASCII digits")  # int("٣") is 3 in Python; typer refuses it
        value = self.kind(raw)  # ValueError for a bad int/float: the caller falls back to typer
        lo, hi = getattr(self.info, "min", None), getattr(self.info, "max", None)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{self.name} out of range")
        return value


def _simple_type(annotation: Any) -> type | None:
    """str/int/float/bool, also inside Optional[...]; None for anything else (Annotated[...] included:
    its typer.Option would be in the annotation, not in the default this parser reads)."""
    if annotation in SIMPLE:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in SIMPLE:
            return args[0]
    return None


def _params(fn: Callable) -> list[_Param] | None:
    hints = typing.get_type_hints(fn, include_extras=True)
    out = []
    for p in inspect.signature(fn).parameters.values():
        info, kind = p.default, _simple_type(hints.get(p.name))
        if info is inspect.Parameter.empty:  # `query: str`: typer makes it a required argument
            info = _RequiredArgument()
        if kind is None or type(info).__name__ not in ("OptionInfo", "ArgumentInfo", "_RequiredArgument"):
            return None
        if any(getattr(info, a, None) not in (None, False) for a in UNSUPPORTED):
            return None
        out.append(_Param(p.name, kind, info))
    return out


def _bind(params: list[_Param], args: list[str]) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    positional = [p for p in params if p.argument]
    options_done = False
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if not options_done and tok == "--":
            options_done = True
            continue
        if options_done or not tok.startswith("-") or tok == "-":
            if not positional:
                return None
            p = positional.pop(0)
            values[p.name] = p.convert(tok)
            continue
        name, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")  # click: -k=3 is "=3"
        p = next((q for q in params if name in q.flags or name in q.names), None)
        if p is None or p.name in values:
            return None  # unknown (or --help), or given twice: typer decides
        if name in p.flags:
            if eq:
                return None
            values[p.name] = p.flags[name]
            continue
        if not eq:
            if i >= len(args):
                return None
            inline = args[i]
            i += 1
        values[p.name] = p.convert(inline)
    for p in params:
        if p.name not in values:
            if p.info.default is ...:
                return None  # a required value is missing: typer says which
            values[p.name] = p.info.default
    return values


def parse(app: Any, argv: list[str], commands: Iterable[str]) -> tuple[Path | None, Callable, dict[str, Any]] | None:
    """(home, command function, its keyword arguments) for `argv`, or None to let typer parse it.

    `home` is the global --home (or $AGENTSLEEP_HOME) as typer would pass it to the app's callback."""
    home: Path | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "--home" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif argv[i].startswith("--home="):
            value, i = argv[i].split("=", 1)[1], i + 1
        else:
            return None
        if not value.strip():
            return None  # typer's path refuses an empty --home in one line
        home = Path(value)
    if i >= len(argv) or argv[i] not in set(commands):
        return None
    if home is None and os.environ.get("AGENTSLEEP_HOME"):
        if not os.environ["AGENTSLEEP_HOME"].strip():
            return None  # typer's path refuses a blank home in one line
        home = Path(os.environ["AGENTSLEEP_HOME"])
    fn = next((c.callback for c in app.registered_commands
               if (c.name or c.callback.__name__.replace("_", "-")) == argv[i]), None)
    params = _params(fn) if fn is not None else None
    if params is None:
        return None
    try:
        values = _bind(params, argv[i + 1:])
    except ValueError:
        return None
    return None if values is None else (home, fn, values)
