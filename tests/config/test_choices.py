"""A config field's choices: refused when composed, plain strings everywhere else."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_config
from tic_grpo_cli.config import choices
from tic_grpo_cli.config.choices import AlgorithmName, Choice
from tic_grpo_cli.config.schema import ConfigError


def test_a_choice_is_its_plain_string_everywhere():
    name = compose_config("algorithm=grpo").algorithm.name
    assert type(name) is AlgorithmName  # typed by the schema ...
    # ... and what the rest of the code sees is the string.
    assert name == "grpo" and hash(name) == hash("grpo") and {"grpo": 1}[name] == 1
    shown = (str(name), f"{name}", "%s" % name, repr(name), json.dumps(name))  # noqa: UP031
    assert shown == ("grpo", "grpo", "grpo", "'grpo'", '"grpo"')


def test_composing_refuses_a_value_outside_the_choices():
    message = r"^hardware\.device: got 'tpu'; did you mean cpu\? \(allowed: auto, cpu, cuda\)$"
    with pytest.raises(ConfigError, match=message):
        compose_config("hardware.device=tpu")
    assert compose_config("algorithm.aggregation=null").algorithm.aggregation is None


def test_every_member_is_named_as_its_value():
    # OmegaConf reads `hardware.device=cpu` as the member *named* cpu.
    sets = [c for c in vars(choices).values() if isinstance(c, type) and issubclass(c, Choice)]
    assert len(sets) > 10
    for choice in sets:
        assert [m.name for m in choice] == [m.value for m in choice], choice


def test_the_scorers_are_the_rewards_ones():
    from tic_grpo_cli.data.rewards import SCORER_NAMES

    assert {s.value for s in choices.Scorer} == {"auto", *SCORER_NAMES}
