"""Command-line interface: thin commands that parse, validate, call one layer and print."""
