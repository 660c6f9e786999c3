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


# ----------------------------------------------------------------------------- the papers' sections
def test_a_papers_own_settings_live_in_the_profile_and_can_be_overridden(tmp_path):
    """Everything that differs by profile is in the TOMLs (issue 17): a paper reads its
    ``[papers.<paper>]`` section; ``--set papers.p002.epochs=3`` changes it; profiles stay
    hashable and their sections read-only."""
    import dataclasses

    from bus_paper.config import Section
    from bus_paper.papers.p000.experiments import own_pretraining, pretraining_profile
    from bus_paper.papers.p001.experiments import default_plan
    from bus_paper.papers.p002.train import PAPER_SETTINGS, settings_for
    from bus_paper.papers.p004.run import settings_for as p004_settings

    cpu, gpu, smoke = (load_profile(n) for n in ("cpu", "gpu", "smoke"))
    assert settings_for(gpu) == PAPER_SETTINGS and settings_for(cpu) != PAPER_SETTINGS
    assert settings_for(cpu).epochs == 2 and settings_for(cpu).lr_at(1) == pytest.approx(1e-5)
    more = cpu.replace(**{"papers.p002.epochs": 3})
    assert settings_for(more).epochs == 3 and settings_for(cpu).epochs == 2  # a copy, not an edit
    assert hash(more) != hash(cpu) and more != cpu
    with pytest.raises(TypeError, match="read-only"):
        cpu.papers["p002"]["epochs"] = 9
    with pytest.raises(KeyError, match="epoch"):
        settings_for(cpu.replace(**{"papers.p002.epoch": 3}))  # a typo is named
    with pytest.raises(KeyError, match=r"no \[papers.p002\]"):
        settings_for(dataclasses.replace(cpu, papers=Section()))

    assert own_pretraining(gpu) and not own_pretraining(cpu) and not own_pretraining(smoke)
    assert pretraining_profile(cpu, "vgg16").pretrain.epochs == 2
    assert pretraining_profile(gpu, "vgg16") is gpu
    cpu_plan = default_plan(cpu, ["proposed", "resnet50", "vgg16"], [0, 1])
    assert cpu_plan.seeds == {"proposed": [0, 1], "resnet50": [0, 1], "vgg16": [0]}
    assert default_plan(gpu, ["proposed", "vgg16"], [0, 1]).ssl == {"proposed": True, "vgg16": True}
    assert (p004_settings(cpu).mias_pool, p004_settings(gpu).mias_pool) == ("all", "train")
    assert p004_settings(smoke, n_boot=None).n_boot == 200
    assert p004_settings(smoke, n_boot=50).n_boot == 50

    bad = tmp_path / "bad.toml"
    bad.write_text("[papers]\np002 = 3\n")
    with pytest.raises(ValueError, match="one table per paper"):
        load_profile(bad)


def test_no_code_or_notebook_branches_on_a_profiles_name():
    """A profile's name says which TOML was read, nothing more: code that compared it with
    "cpu" or "gpu" hid settings from the TOMLs (issue 17)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"""(\bname|\bprofile)\s*(==|!=)\s*\\?["'](smoke|cpu|gpu)\\?["']""")
    hits = [f"{p.relative_to(root)}:{i}: {line.strip()}"
            for folder in ("bus_paper", "notebooks")
            for p in sorted((root / folder).rglob("*")) if p.suffix in (".py", ".ipynb")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)
