"""Command line: `run` the operator, print the `crd` or the worker `policy`, or `render` a resource offline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from avr_operator.api.crd import crd_yaml, to_yaml
from avr_operator.api.resource import AVRDeployment, InvalidResourceError
from avr_operator.constants import KIND
from avr_operator.render.bundle import render
from avr_operator.render.policy import policy_yaml


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avr-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig or in-cluster account")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs such as 'team-*' allowed)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    run.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        metavar="URL",
        help="liveness endpoint served by the operator; empty to disable (default: %(default)s)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        metavar="PORT",
        help="port of the Prometheus /metrics endpoint; 0 to disable (default: %(default)s)",
    )
    run.add_argument(
        "--resync",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="re-check every resource this often even without events (default: %(default)s)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition YAML")
    crd.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")

    pol = sub.add_parser("policy", help="print the core workers' admission policy (the chart installs it)")
    pol.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")

    rend = sub.add_parser("render", help="print the manifests one AVRDeployment produces (no cluster needed)")
    rend.add_argument("-f", "--filename", required=True, help="YAML file with AVRDeployment(s); '-' for stdin")
    rend.add_argument("--namespace", default="default", help="namespace of objects that set none")
    return parser


def _render(filename: str, namespace: str) -> str:
    text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    docs: list[Any] = [d for d in yaml.safe_load_all(text) if d]
    resources = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not resources:
        raise InvalidResourceError(f"{filename}: no {KIND} found")
    manifests = [m for body in resources for m in render(AVRDeployment.from_body(body, namespace))]
    return "---\n".join(to_yaml(m) for m in manifests)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "crd":
        if args.output:
            args.output.write_text(crd_yaml())
        else:
            sys.stdout.write(crd_yaml())
    elif args.command == "policy":
        if args.output:
            args.output.write_text(policy_yaml())
        else:
            sys.stdout.write(policy_yaml())
    elif args.command == "render":
        try:
            sys.stdout.write(_render(args.filename, args.namespace))
        except (InvalidResourceError, ValidationError, OSError, yaml.YAMLError) as exc:
            raise SystemExit(f"avr-operator render: {exc}") from None
    else:
        from avr_operator.runner import run  # noqa: PLC0415 (kopf and the kubernetes client load only for `run`)

        run(
            namespaces=args.namespace,
            liveness=args.liveness or None,
            metrics_port=args.metrics_port,
            resync_seconds=args.resync,
            verbose=args.verbose,
        )


if __name__ == "__main__":
    main()
