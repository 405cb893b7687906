"""What the command-line programs share: absl flag parsing with clear config errors.

``ml_collections`` config flags report an override of a field the config does not have
(``--config.data.nope=1``) as a raw ``AttributeError``/``KeyError`` traceback, and a config
file that fails to load as an ``OSError``; `run` turns each into one line that names the flag
and what was expected, and exits with status 2, as absl does for its own flag errors.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags


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


def run(main: Callable[[list[str]], object]) -> None:
    """``absl.app.run(main)`` with `parse_flags`."""
    app.run(main, flags_parser=parse_flags)
