"""Command line of the worker."""


def main() -> None:
    raise SystemExit("avr-runtime: not implemented yet")
