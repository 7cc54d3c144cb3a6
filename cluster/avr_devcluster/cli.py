"""`avr-devcluster`: build the binaries, run a cluster in the foreground, print its environment, or run the demo."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from . import binaries, demo, rundir
from .cluster import DevCluster, StartupError


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


def _build(_: argparse.Namespace) -> int:
    print(binaries.build())
    return 0


def _up(args: argparse.Namespace) -> int:
    # Ctrl-C must stop the cluster even when started from a context that ignores SIGINT (e.g. `cmd &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cluster = DevCluster(args.bin_dir, nodes=args.nodes)
        with cluster:
            assert cluster.run_dir is not None
            (cluster.run_dir / rundir.SERVING_MARKER).touch()
            print(_exports(cluster.env()), flush=True)
            print("# cluster is up; Ctrl-C stops it and removes its files", file=sys.stderr, flush=True)
            signal.pause()  # until SIGINT (KeyboardInterrupt) or SIGTERM/SIGHUP (SystemExit) unwinds
    except (binaries.MissingBinariesError, StartupError) as error:
        print(f"avr-devcluster: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _env(_: argparse.Namespace) -> int:
    """Exports for the pinned tools on PATH and, if `up` is running, for using that cluster."""
    env: dict[str, str] = {}
    try:
        bin_dir = str(binaries.locate())
        env[binaries.BIN_ENV] = bin_dir
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    except binaries.MissingBinariesError as error:
        print(f"# {error}", file=sys.stderr)
    running = [path / "admin.kubeconfig" for path in rundir.serving()]
    running = [path for path in running if path.exists()]
    if running:
        env["KUBECONFIG"] = str(running[0])
        env["USE_EXISTING_CLUSTER"] = "1"
    else:
        print("# no running cluster (start one with `avr-devcluster up`)", file=sys.stderr)
    print(_exports(env))
    return 0


def _demo(args: argparse.Namespace) -> int:
    options = demo.DemoOptions(example=args.example, text=args.text, ready_timeout=args.ready_timeout)
    if args.bin_dir:
        options.bin_dir = Path(args.bin_dir)
    return demo.main(options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avr-devcluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or reuse the control-plane binaries; prints their directory")
    up = commands.add_parser("up", help="start a cluster and keep it running until Ctrl-C")
    up.add_argument("--bin-dir", help=f"binaries (default: ${binaries.BIN_ENV} or the build cache)")
    up.add_argument("--nodes", type=int, default=3, help="number of fake kwok nodes (default 3)")
    commands.add_parser("env", help="print shell exports: PATH with the binaries, KUBECONFIG of a running `up`")
    run_demo = commands.add_parser(
        "demo", help="cluster, operator, an example AVRDeployment until Ready, a sample call, teardown"
    )
    run_demo.add_argument("--bin-dir", help=f"binaries (default: ${binaries.BIN_ENV} or build/reuse them)")
    run_demo.add_argument(
        "--example", type=Path, default=demo.DEFAULT_EXAMPLE, help="the AVRDeployment to apply (default: %(default)s)"
    )
    run_demo.add_argument("--text", default=demo.DemoOptions.text, help="what the caller says")
    run_demo.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for Ready (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    handler = {"build": _build, "up": _up, "env": _env, "demo": _demo}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
