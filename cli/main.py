"""phonevault command line entry point (wired up as commands land)."""

import click


@click.group()
def main() -> None:
    """phonevault: every dated version of every iPhone, deduplicated and encrypted."""
