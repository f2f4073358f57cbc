"""`evoquality-operator`: run the kopf operator for EvoQualityRun resources.

    evoquality-operator --namespace ml --metrics-port 8080
    evoquality-operator --all-namespaces --voter-image reg/voter:1.0 --trainer-image reg/trainer:1.0

One replica (kopf peering is off: --standalone); flags default to EVOQUALITY_* env variables.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .controller import OperatorConfig
from .jobs import DEFAULT_IMAGES, IMAGE_ENV, Images


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="evoquality-operator", description="Kubernetes operator for EvoQualityRun resources."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help="namespace to watch (repeatable; default: EVOQUALITY_NAMESPACES, comma-separated)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch all namespaces (default)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env.get("EVOQUALITY_METRICS_PORT", "8080")),
        help="Prometheus /metrics port (EVOQUALITY_METRICS_PORT, 8080)",
    )
    parser.add_argument(
        "--metrics-addr",
        default=env.get("EVOQUALITY_METRICS_ADDR", "0.0.0.0"),
        help="address the metrics server binds (EVOQUALITY_METRICS_ADDR, 0.0.0.0)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(env.get("EVOQUALITY_HEALTH_PORT", "8081")),
        help="kopf liveness endpoint port, /healthz (EVOQUALITY_HEALTH_PORT, 8081; 0 disables)",
    )
    for kind, var in IMAGE_ENV.items():
        parser.add_argument(
            f"--{kind}-image",
            default=env.get(var) or DEFAULT_IMAGES[kind],
            help=f"default image of the {kind} stages ({var})",
        )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env.get("EVOQUALITY_RESYNC_SECONDS", "60")),
        help="safety-net reconcile interval per run (EVOQUALITY_RESYNC_SECONDS, 60)",
    )
    parser.add_argument(
        "--skip-crd-check",
        action="store_true",
        help="start even when the installed CRD's schema revision cannot be checked",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[OperatorConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    namespaces = tuple(args.namespaces or ())
    if not namespaces and not args.all_namespaces:
        namespaces = tuple(n for n in os.environ.get("EVOQUALITY_NAMESPACES", "").split(",") if n)
    config = OperatorConfig(
        namespaces=namespaces,
        all_namespaces=not namespaces,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        images=Images(voter=args.voter_image, trainer=args.trainer_image, worker=args.worker_image),
        resync_seconds=args.resync_seconds,
        check_crd=not args.skip_crd_check,
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    config, args = parse_config(argv)
    # read by the handlers module at import (the timer interval is fixed at registration)
    os.environ["EVOQUALITY_RESYNC_SECONDS"] = str(config.resync_seconds)
    import kopf

    from . import handlers

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    handlers.configure(config)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    try:
        kopf.run(
            standalone=True,
            clusterwide=config.all_namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=liveness,
        )
    except Exception as exc:  # startup refused (e.g. an older CRD): the reason is logged
        logging.getLogger("evoquality_operator").error("operator stopped: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
