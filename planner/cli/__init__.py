"""Command-line interface: one typer app, one small module per command."""
