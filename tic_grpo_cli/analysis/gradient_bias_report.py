"""The gradient-bias analysis's outputs: gradient_bias.json / .csv, the plot, the console
tables. Each takes the `result` dict `gradient_bias.run` returns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

METRICS = ("cos_now", "cos_old", "err_now", "err_old")
STATE = ("J", "grad_drift", "rho_max", "tic_clipped_mass", "token_outside_clip", "kl_old_new")


def write_outputs(result: dict, out: Path, notes: dict[str, str]) -> None:
    """gradient_bias.json, .csv and .png in `out`; `notes`: direction label -> its legend."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradient_bias.json").write_text(json.dumps(result, indent=2))
    with open(out / "gradient_bias.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["k", "direction", *METRICS, *STATE])
        for row in result["rows"]:
            for label, m in row["directions"].items():
                writer.writerow(
                    [row["k"], label, *(m[x] for x in METRICS), *(row[x] for x in STATE)]
                )
    plot(result, out / "gradient_bias.png", notes)


STYLE = {  # label -> (colour, line style): one hue per family, dashes for variants
    "grpo": ("tab:blue", "-"),
    "grpo_T": ("tab:blue", "--"),
    "grpo_T_unclipped": ("tab:cyan", ":"),
    "grpo_no_is": ("tab:orange", "-"),
    "grpo_no_is_T": ("tab:orange", "--"),
    "tic": ("tab:red", "-"),
    "tic_clipped": ("tab:purple", "--"),
}


DRIFT_LABEL = "‖∇J(θ_k) − ∇J(θ_old)‖ / ‖∇J(θ_old)‖ (how far the true gradient moved)"


def plot(result: dict, path: Path, notes: dict[str, str]) -> None:
    """Relative errors and cosines of every direction against k (see DRIFT_LABEL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg = result["rows"], result["config"]
    ks = [r["k"] for r in rows]
    floor = 1e-17  # exact agreement is ~1e-16; clamp 0 so a log axis can show it
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    panels = [  # the log panel shows which rows are exact, the linear ones how big the rest are
        (axes[0, 0], "err_now", "relative error to ∇J(θ_k), the current gradient (log)", True),
        (axes[0, 1], "err_now", "relative error to ∇J(θ_k), the current gradient", False),
        (axes[1, 0], "err_old", "relative error to ∇J(θ_old), the rollout gradient", False),
    ]
    for ax, metric, title, log in panels:
        for label in rows[0]["directions"]:
            colour, dash = STYLE.get(label, ("black", "-"))
            ys = [max(r["directions"][label][metric], floor) for r in rows]
            note = notes[label]
            ax.plot(ks, ys, dash, color=colour, lw=2, marker=".", label=f"{label}: {note}")
        drift = [max(r["grad_drift"], floor) for r in rows]
        ax.plot(ks, drift, color="gray", lw=4, alpha=0.35, label=DRIFT_LABEL)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(floor / 3, 10)
        else:
            ax.set_ylim(-0.02, 1.0)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax = axes[1, 1]
    eps = cfg["epsilon_high"]
    ax.plot(ks, [r["rho_max"] for r in rows], color="black", lw=2, label="max_s ρ(s)")
    ax.axhline(1 + eps, color="black", ls=":", lw=1, label=f"1 + ε_high = {1 + eps:g}")
    ax.set_ylabel("ratio")
    share = ax.twinx()
    for key, color, label in (
        ("tic_clipped_mass", "tab:purple", "P_old-mass with ρ > 1+ε_high"),
        ("token_outside_clip", "tab:blue", "P_old-mean share of tokens outside the PPO clip range"),
    ):
        share.plot(ks, [r[key] for r in rows], color=color, lw=2, ls="--", label=label)
    share.set_ylabel("share")
    share.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper left")
    ax.set_title("how far θ_k is from θ_old")
    ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("inner step k")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, handlelength=4)
    fig.suptitle(
        f"Expected update directions by exact enumeration: {result['n_completions']} completions, "
        f"|V|={cfg['vocab']} (EOS {'on' if cfg['eos'] else 'off'}), T={cfg['length']}, "
        f"{cfg['policy']} policy; inner steps follow {cfg['path']}, lr={cfg['lr']:g}"
    )
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(result: dict, ks: list[int] | None = None) -> None:
    """The directions' cosines and errors at steps `ks`, then how far θ_k moved."""
    from rich.console import Console
    from rich.table import Table

    rows = result["rows"]
    ks = ks or sorted({0, 1, 2, 4, 8, rows[-1]["k"]} & {r["k"] for r in rows})
    table = Table(title="expected update direction vs the true gradient (exact)")
    table.add_column("k", justify="right")
    table.add_column("direction")
    for target in ("∇J(θ_k)", "∇J(θ_old)"):
        table.add_column(f"cos {target}", justify="right")
        table.add_column(f"rel.err {target}", justify="right")
    for k in ks:
        for label, m in rows[k]["directions"].items():
            cells = (f"{m['cos_now']:.6f}", f"{m['err_now']:.2e}")
            cells += (f"{m['cos_old']:.6f}", f"{m['err_old']:.2e}")
            table.add_row(str(k), label, *cells)
        table.add_section()
    state = Table(title="how far θ_k is from θ_old")
    for col in ("k", *STATE):
        state.add_column(col, justify="right")
    for k in ks:
        state.add_row(str(k), *(f"{rows[k][x]:.4g}" for x in STATE))
    console = Console()
    console.print(table)
    console.print(state)
