"""The smoke profile cut to one pretraining and one fine-tuning step of 4 images: for tests that
need a real `bus-paper train` run (a deployable model file) in seconds."""

from pathlib import Path

from bus_paper.config import PROFILES_DIR

TINY = (PROFILES_DIR / "smoke.toml").read_text().replace(
    "[pretrain]\nepochs = 1\nbatch_size = 8\nmax_steps = 2",
    "[pretrain]\nepochs = 1\nbatch_size = 4\nmax_steps = 1").replace(
    "[finetune]\nepochs = 1\nbatch_size = 8\nseeds = [0]\nmax_steps = 2",
    "[finetune]\nepochs = 1\nbatch_size = 4\nseeds = [0]\nmax_steps = 1")


def write_tiny(folder: Path) -> Path:
    """``folder/tiny.toml``; fails loudly if smoke.toml changed so that the cut no longer applies."""
    assert TINY.count("max_steps = 1") == 2, "smoke.toml changed: update tests/tiny_profile.py"
    path = folder / "tiny.toml"
    path.write_text(TINY)
    return path
