"""`lanmt decoders`: the installed decoders, the package each comes from, and its options."""

from __future__ import annotations

import json
from typing import Annotated

import typer

_NEEDS = {
    "lanmt": "a LaNMT model",
    "transformer": "a Transformer model, or the teacher inside a LaNMT bundle",
}


def _text(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        head = f"{row['name']}  (package {row['package']} {row['version']}, {row['entry_point']})"
        lines.append(head)
        if row["error"] and "help" not in row:
            lines += [f"    error: {row['error']}", ""]
            continue
        if row["error"]:
            lines.append(f"    error: {row['error']}")
        lines.append(f"    {row['help']}")
        needs = _NEEDS.get(row["model_kind"], f"a {row['model_kind']} model")
        if row["needs_teacher"]:
            needs += " and its autoregressive teacher"
        lines.append(f"    needs: {needs}")
        if row["numbered_option"]:
            lines.append(f"    {row['name']}N (or {row['name']}-N) sets {row['numbered_option']}=N")
        for o in row["options"]:
            limit = f", >= {o['minimum']:g}" if o["minimum"] is not None else ""
            limit += f", <= {o['maximum']:g}" if o.get("maximum") is not None else ""
            lines.append(
                f"    --opt {o['name']}={o['type'].upper()}  "
                f"(default {o['default']}{limit}) {o['help']}"
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def decoders(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list instead of text.")
    ] = False,
) -> None:
    """List the installed decoders (from the `lanmt.decoders` entry points) and their options.

    Pick one with `lanmt translate --decoder NAME --opt key=value`.
    """
    from lanmt_cli.registry import describe

    rows = describe()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
    elif not rows:
        typer.echo("no decoders installed (is lanmt installed? try `pip install -e .`)")
    else:
        typer.echo(_text(rows))


def register(app: typer.Typer, wrap) -> None:
    app.command("decoders")(wrap(decoders))
