"""MkDocs hook: the command-line reference, rendered from the real `neurt` argparse parser.

A page that contains the line ``<!-- neurt-cli-reference -->`` gets, in its place, one section per
sub-command of `napari_neurt.cli.build_parser`: its help line, its usage and a table of its
arguments. Nothing is copied by hand, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- neurt-cli-reference -->"


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each sub-command, in the order `neurt --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _argument_name(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{option}`" for option in action.option_strings)
        if action.nargs == 0:
            return names
        metavar = action.metavar or action.dest.upper()
        return f"{names} `{metavar}`"
    return f"`{action.metavar or action.dest}`"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    if action.required:
        return "required"
    return f"`{action.default}`"


def _details(action: argparse.Action) -> str:
    text = action.help or ""
    if action.choices:
        text += (" " if text else "") + "(one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
    if action.required and action.option_strings:
        text = "**required**: " + text
    if not action.option_strings and action.nargs in ("+", "*"):
        text += " (one or more)" if action.nargs == "+" else " (any number)"
    return _cell(text)


def command_markdown(name: str, summary: str, parser: argparse.ArgumentParser) -> str:
    """Markdown for one sub-command."""
    usage = parser.format_usage().strip().removeprefix("usage: ").replace("\n       ", "\n")
    summary = _cell(summary).rstrip(".")
    summary = summary[:1].upper() + summary[1:] + "."
    lines = [f"## `neurt {name}`", "", summary, "", "```text", usage,
             "```", "", "| argument | default | what it does |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        lines.append(f"| {_argument_name(action)} | {_default(action)} | {_details(action)} |")
    lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    from napari_neurt.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal width
    try:
        parser = build_parser()
        commands = subcommands(parser)
        overview = ["| command | what it does |", "| --- | --- |"]
        overview += [f"| [`neurt {name}`](#neurt-{name}) | {_cell(summary)} |"
                     for name, summary, _ in commands]
        parts = ["\n".join(overview) + "\n"]
        parts += [command_markdown(name, summary, sub) for name, summary, sub in commands]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
