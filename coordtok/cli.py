"""``coordtok`` command line: one entry point, one subcommand per job.

This module is the composition root: the only place in :mod:`coordtok` that imports the
packages built on it (:mod:`sit`, :mod:`eval`). Each package registers its own subcommands
(``coordtok.commands``, ``sit.commands``, ``eval.commands``).

Every user-facing failure derives from :class:`coordtok.errors.CoordTokError` and ends as one
line ``coordtok: error: ...`` with exit status 2, as do bad arguments; only genuine bugs show a
traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import CoordTokError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (``coordtok <cmd>: error: ...``), like every other."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from eval import commands as eval_commands
    from sit import commands as sit_commands

    from . import commands as coordtok_commands

    p = _Parser(
        prog="coordtok",
        description="CoordTok long-video tokenizer, CoordTok-SiT, and the conv-3D baselines they are measured against.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for package in (coordtok_commands, sit_commands, eval_commands):
        package.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 a user error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.fn(args)
    except CoordTokError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"coordtok: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coordtok: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
