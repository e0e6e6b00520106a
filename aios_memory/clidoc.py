"""The CLI reference (docs/cli.md), generated from the commands' own ``--help``.

``python -m aios_memory.clidoc > docs/cli.md`` writes it; a test fails when the committed page and the
``--help`` texts differ, so the reference cannot drift from the code.
"""

from __future__ import annotations

import click

HEADER = """# CLI reference

Generated from `aios-memory --help` by `python -m aios_memory.clidoc > docs/cli.md`; do not edit by hand
(`tests/test_clidoc.py` fails when this page and the commands' help differ).

Every command takes the global `--store PATH` (or `$AIOS_MEMORY_STORE`) before its name, e.g.
`aios-memory --store ./mem search "cats"`. Errors exit non-zero with one line naming the error type.
"""


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(click.Context(cmd))):
            sub = cmd.get_command(click.Context(cmd), name)
            if sub is not None and not sub.hidden:
                out.extend(_walk(sub, [*path, name]))
    return out


def _help(cmd: click.Command, path: list[str]) -> str:
    """What ``aios-memory PATH --help`` prints, at a fixed width so the page is stable."""
    parent: click.Context | None = None
    ctx = None
    for i, name in enumerate(path):
        ctx = click.Context(cmd if i == len(path) - 1 else click.Group(), info_name=name, parent=parent)
        parent = ctx
    assert ctx is not None
    ctx.command = cmd
    formatter = click.HelpFormatter(width=100, max_width=100)
    cmd.format_help(ctx, formatter)
    return formatter.getvalue().rstrip()


def render() -> str:
    from aios_memory.cli import cli

    parts = [HEADER]
    for path, cmd in _walk(cli, ["aios-memory"]):
        title = " ".join(path)
        parts.append(f"## `{title}`\n\n```text\n{_help(cmd, path)}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
