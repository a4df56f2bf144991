"""What every script's command line shares: flags with dashes or underscores, "did you mean" for an unknown flag,
errors in one line (exit status 2 for usage errors, 1 for the rest), a traceback only with --debug or
HF_VAE_DEBUG=1, one line on Ctrl-C, and no transformers progress bars while saving or loading weights.

    parser = ScriptParser(prog="convert.py", description=...)
    ...
    if __name__ == "__main__":
        sys.exit(run_main("convert.py", main))
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Callable, List, Optional, Sequence

from ..training.arguments import debug_requested  # the trainer's command line decides the same way

DEBUG_FLAG = "--debug"


def _canonical(flag: str) -> str:
    return flag.replace("-", "_")


class ScriptParser(argparse.ArgumentParser):
    """An ArgumentParser that takes `--max-steps` and `--max_steps` alike, suggests the closest flag for an unknown
    one, and reports a usage error in one line (exit status 2)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # an abbreviation may silently pick another flag
        super().__init__(*args, **kwargs)

    def _long_flags(self) -> List[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def _spelled_as_registered(self, argv: Sequence[str]) -> List[str]:
        registered = {_canonical(flag): flag for flag in self._long_flags()}
        out = []
        for token in argv:
            if token.startswith("--") and len(token) > 2:
                name, eq, value = token.partition("=")
                token = registered.get(_canonical(name), name) + eq + value
            out.append(token)
        return out

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        args = [token for token in args if token != DEBUG_FLAG]
        return super().parse_known_args(self._spelled_as_registered(args), namespace)

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            unknown = [t.split("=")[0] for t in message.split(":", 1)[1].split() if t.startswith("--")]
            guesses = [m[0] for t in unknown for m in [difflib.get_close_matches(t, self._long_flags(), n=1,
                                                                                 cutoff=0.6)] if m]
            if guesses:
                message += f" (did you mean {', '.join(guesses)}?)"
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


    def check_bounds(self, args: argparse.Namespace, bounds) -> None:
        """A usage error (one line, exit 2) for a value of `args` outside its `bounds` {name: (low, high or None)}:
        refused now, not after loading a model or reading a dataset."""
        for name, (low, high) in bounds.items():
            value = getattr(args, name)
            if value is not None and (value < low or (high is not None and value > high)):
                self.error(f"Expected --{name} >= {low}{f' and <= {high}' if high is not None else ''}, got {value}.")


def quiet_progress_bars() -> None:
    """transformers' 'Writing model shards' / 'Loading weights' bars: noise in a script's output and its logs."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()


def run_main(prog: str, main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None,
             errors=(ValueError, OSError, RuntimeError)) -> int:
    """Run a script's `main(argv)`: `errors` become one line `prog: error: ...` and exit status 1 (usage errors
    already exited with 2 from `ScriptParser`); Ctrl-C prints one line; --debug / HF_VAE_DEBUG=1 re-raise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    quiet_progress_bars()
    try:
        main(argv)
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted.", file=sys.stderr)
        return 130
    except errors as error:
        if debug:
            raise
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
