"""Expected errors, and the command-line wrapper that prints them as one readable line.

A user who passes a bad flag, a broken data file, a model folder without a tokenizer or a run folder
that cannot be resumed needs one sentence that names the flag, file or line -- not a 20-line traceback
whose last line is the message. A bug in spo_lab is the opposite: its traceback is what a report needs.
So the library raises :class:`UserError` for the first kind, and :func:`cli_main` runs a command-line
entry point so that

- a :class:`UserError`, or an ``OSError`` about a path the user gave (a missing file, a folder that
  cannot be written), prints ``<program>: error: <message>`` on stderr and exits with status 2,
  as argparse does for a bad flag;
- Ctrl-C prints ``<program>: interrupted`` and exits with status 130 (the shell's convention);
- any other exception keeps its full traceback.

``--debug`` on the command line (removed before the entry point parses its arguments) or the
environment variable ``SPO_LAB_DEBUG=1`` shows the traceback of an expected error too.

    if __name__ == "__main__":
        cli_main(main)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["UserError", "EXPECTED", "DEBUG_ENV", "cli_main", "debug_requested", "shorten"]

DEBUG_ENV = "SPO_LAB_DEBUG"
"""Environment variable that, set to 1, makes :func:`cli_main` show the traceback of expected errors."""


class UserError(ValueError):
    """An expected error caused by what the user asked for: a bad flag, data file, model or run folder.

    Its message is complete on its own (it names the flag, file or line and says what to do), so the
    command line prints it without a traceback. A ValueError, so code that catches bad values still does.
    """


EXPECTED: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                             PermissionError)
"""Errors :func:`cli_main` prints as one line: a UserError, or a path that is missing, of the wrong kind
or not writable (these come from a path the user gave, and their message names it)."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True when ``--debug`` is among ``argv`` (default ``sys.argv[1:]``) or ``SPO_LAB_DEBUG`` is 1 / true / yes."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def shorten(value, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters with a marker saying how long it was.

    Error messages quote what they found; a bad 1 MB line quoted in full buries the message.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text)} characters, cut]"


def _one_line(err: BaseException) -> str:
    """The error's message on one line (an OSError without its own text says what it was and the path)."""
    msg = str(err)
    if isinstance(err, OSError) and err.filename is not None and (not msg or msg.startswith("[Errno")):
        msg = f"{err.filename}: {err.strerror or type(err).__name__}"
    return " ".join(msg.split()) or type(err).__name__


def _program_name(fn) -> str:
    """``python -m spo_lab.evaluate`` for an entry point run as a module (what argparse's usage line shows),
    else the entry point's module name."""
    module = getattr(fn, "__module__", None)
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        return f"python -m {spec.name}" if getattr(spec, "name", None) else os.path.basename(sys.argv[0] or "spo_lab")
    return module or "spo_lab"


def cli_main(fn: Callable, argv: Sequence[str] | None = None, *, prog: str | None = None):
    """Run the entry point ``fn(argv)``; an expected error becomes one line on stderr and exit status 2.

    ``argv`` defaults to ``sys.argv[1:]``; ``--debug`` is taken out of it before ``fn`` sees it, so no
    parser needs to know the flag. With ``--debug`` or ``SPO_LAB_DEBUG=1`` the error is raised as it is.
    Returns what ``fn`` returns; never catches an unexpected exception.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    prog = prog or _program_name(fn)
    try:
        return fn(argv)
    except EXPECTED as err:
        if debug:
            raise
        print(f"{prog}: error: {_one_line(err)} (--debug or {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
