"""length_sensitivity.png shows every series (no-IS's error and the drift nearly coincide),
each seed, and the setting it was computed in."""

from __future__ import annotations

from tic_grpo_cli.analysis.length_sensitivity import figure, setting_text, summarise


def rows() -> list[dict]:
    out = []
    for length in (2, 3, 4):
        for seed in (0, 1, 2):
            drift = 0.3 / length + 0.01 * seed
            out.append(
                {
                    "length": length, "seed": seed, "kl_old_new": 0.01, "rho_max": 1.2,
                    "drift": drift, "err_no_is": drift,  # the same number: one hid the other
                    "err_grpo": 0.5 * drift, "err_tic": 3e-16, "uncorrected": 0.5 + 0.1 * seed,
                    "first_k_tic_cap": None, "first_k_grpo_clip": None,
                }
            )  # fmt: skip
    return out


def test_every_series_is_visible_with_its_seed_spread_and_setting():
    data = rows()
    setting = setting_text(8, eos=False, vocab=3, seeds=[0, 1, 2])
    fig = figure(data, summarise(data), 8, setting, "tic-grpo analyze length-sensitivity --no-eos")
    left, right = fig.axes[:2]
    series = {bars.get_label(): bars.lines[0] for bars in left.containers}
    assert set(series) == {"drift", "no-IS", "GRPO (1/T)", "TIC (max 3e-16)"}
    xs = {label: tuple(line.get_xdata()) for label, line in series.items()}
    assert xs["drift"] != xs["no-IS"]  # offset, so neither hides the other
    assert len({line.get_marker() for line in series.values()}) == 4
    assert len(left.collections) >= 4  # min-max bars over seeds
    seeds = [line for line in right.get_lines() if line.get_label() == "each seed"]
    drawn = sum(len(line.get_xdata()) for line in right.get_lines() if line.get_marker() == ".")
    assert seeds and drawn == len(data)
    title = fig._suptitle.get_text()
    assert "k = 8" in title and "exactly T tokens" in title and "seeds 0, 1, 2" in title
    assert any("--no-eos" in t.get_text() for t in fig.texts)
