"""What the command-line programs share: clear flag errors and one error convention.

``ml_collections`` config flags report an override of a field the config does not have
(``--config.data.nope=1``) as a raw ``AttributeError``/``KeyError`` traceback, and a config
file that fails to load as an ``OSError``; `run` turns each into one line that names the flag
and what was expected, and exits with status 2, as absl does for its own flag errors.

Every program reports the project's own errors (`yolov4_jax.Error`: a bad config, cfg, dataset,
checkpoint or input) the same way: one line ``error: <what is wrong and what to change>`` on
stderr and exit status 1 (`report`, `one_line_errors`). Any other exception is a bug, and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from yolov4_jax import Error

EXIT_ERROR = 1  # the project's own errors; 2 is absl's and argparse's for bad flags


def _config_flag_for(argv: Sequence[str], key: str) -> str | None:
    """The ``--config.<path>`` argument whose path names ``key``."""
    for arg in argv[1:]:
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            path = arg[2:].split("=", 1)[0].split(".")[1:]
            if key in path:
                return arg
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """``flags.FLAGS(argv)``, with config errors as one-line messages (exit status 2)."""
    try:
        argv = flags.FLAGS(argv)
        for name in flags.FLAGS:  # a config file that failed to load leaves an error object
            value = flags.FLAGS[name].value
            if type(value).__name__ == "_ErrorConfig":
                raise OSError(f"--{name}: {object.__getattribute__(value, '_error')}")
        return argv
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError) as e:
        while e.args and isinstance(e.args[0], BaseException):  # ml_collections nests them
            e = e.args[0]
        text = str(e.args[0] if e.args else e)
        found = re.search(r"'([^']+)'", text)
        key = found.group(1) if found else text
        arg = _config_flag_for(argv, key)
        message = (
            f"{arg or 'a --config override'}: the config has no field {key!r} "
            "(configs/base.py lists every field)"
        )
        if "Did you mean" in text:
            message += "; " + text[text.index("Did you mean") :].strip()
    except OSError as e:
        message = " ".join(str(e).split())
    print(f"FATAL Flags parsing error: {message}", file=sys.stderr)
    print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(2)


def report(error: Error) -> int:
    """Prints a project error as one ``error: ...`` line on stderr; returns the exit status."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_ERROR


def one_line_errors(main: Callable[..., object]) -> Callable[..., object]:
    """``main`` with the project's errors printed by `report` and ending the program (status
    1); other exceptions propagate with their traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Error as e:
            sys.exit(report(e))

    return wrapped


def run(main: Callable[[list[str]], object]) -> None:
    """``absl.app.run(main)`` with `parse_flags` and `one_line_errors`."""
    app.run(one_line_errors(main), flags_parser=parse_flags)


def parse_size(text: str) -> tuple[int, int]:
    """An argparse ``--size``: ``416`` or ``WIDTHxHEIGHT`` -> (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or WIDTHxHEIGHT, got {text!r}")
    width, height = parts if len(parts) == 2 else parts * 2
    return height, width
