"""The `neurt` command line. Each sub-command is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="open napari with the simulated two-photon sample and its traces")
    p.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window and exit")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .plugin.demo import run_demo

    return run_demo(screenshot=args.screenshot, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as error:  # bad input: one clear line, no traceback
        print(f"neurt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
