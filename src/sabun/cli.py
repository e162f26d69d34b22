"""The `sabun` command line: parses arguments and calls one library function per command."""

from __future__ import annotations

import sys

import typer

from sabun.errors import SabunError

app = typer.Typer(
    name="sabun",
    help="Train LoRA adapters for Stable Diffusion by learning differences.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- toy world commands (sabun render toy, sabun caption) ---
# --- end toy world commands ---

# --- train command (sabun train) ---
# --- end train command ---


def main() -> None:
    """Entry point: run the app; input errors become one line on stderr and exit status 2."""
    try:
        app()
    except SabunError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
