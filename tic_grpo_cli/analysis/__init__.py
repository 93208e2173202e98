"""Analyses that check the paper's claims exactly, outside the training loop.

`tic-grpo analyze NAME [args]` dispatches to `main` here; each analysis is one module with
its own `main(argv)`, imported only when asked for.
"""

from __future__ import annotations

import importlib
import sys

ANALYSES = {  # subcommand -> (module, one-line description)
    "gradient-bias": (
        "tic_grpo_cli.analysis.gradient_bias",
        "expected GRPO / no-IS / TIC updates vs the true gradient, by exact enumeration",
    ),
    "length-sensitivity": (
        "tic_grpo_cli.analysis.length_sensitivity",
        "the same exact bias as the completion length T grows",
    ),
    "chain-study": (
        "tic_grpo_cli.analysis.studies.chain",
        "tables and plots of the chain study's sweeps (docs/results/chain_study)",
    ),
    "staleness-study": (
        "tic_grpo_cli.analysis.studies.staleness",
        "tables and plots of the staleness study's sweeps (docs/results/staleness_study)",
    ),
}


def _usage() -> str:
    lines = ["usage: tic-grpo analyze NAME [args]   (NAME --help for its options)", ""]
    lines += [f"  {name:<16} {about}" for name, (_, about) in ANALYSES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in ANALYSES:
        print(f"error: unknown analysis {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(ANALYSES[name][0]).main(rest)
