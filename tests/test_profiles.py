"""A profile's budget in words comes from its values, so a page can never state another epoch
count than the one the runs used."""

import re

import pytest

from bus_paper.config import PROFILE_NAMES, load_profile


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_summary_states_the_values_and_descriptions_carry_no_numbers(name):
    prof = load_profile(name)
    # a hand-written number drifts (cpu.toml said "8 fine-tuning epochs" while it set 5)
    assert not re.search(r"\d", prof.description), prof.description
    text = prof.summary()
    assert f"{prof.finetune.epochs} fine-tuning epochs at batch {prof.finetune.batch_size}" in text
    assert f"{prof.pretrain.epochs} SSL epochs at batch {prof.pretrain.batch_size}" in text
    assert f"{prof.data.image_size} px" in text and prof.model.variant in text
    changed = prof.replace(**{"finetune.epochs": prof.finetune.epochs + 3}).summary()
    assert f"{prof.finetune.epochs + 3} fine-tuning epochs" in changed
