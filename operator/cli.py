"""Command line of the operator (filled in by the operator work)."""


def main() -> None:
    raise SystemExit("avr-operator: not implemented yet")
