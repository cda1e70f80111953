"""The ``snnops`` command: ``snnops profile`` (the main job), ``snnops train``.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; the
module is imported only when its subcommand runs, so ``snnops --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "profile": ("snnops.cli.profile", "training-time profile of dense / STT / PTT / HTT models"),
    "train": ("snnops.cli.train", "train a model (--method tt | lite | joint)"),
}


class CLIError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def summary(doc: str) -> str:
    """A module docstring's first line as ``--help`` shows it (no reST literals)."""
    return doc.splitlines()[0].replace("``", "")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="snnops", description=summary(__doc__))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        parser.print_usage(sys.stderr)
        print(f"snnops: unknown command {name!r}; choose from {sorted(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except CLIError as exc:
        print(f"snnops {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
