"""The training engine on the smoke profile: end to end, deterministic, resumable, predictable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bus_paper.config import load_profile
from bus_paper.metrics import binary_metrics
from bus_paper.train import finetune, pretrain
from bus_paper.train.engine import load_checkpoint
from bus_paper.train.finetuning import FinetuneStage

SMOKE = load_profile("smoke").replace(**{"finetune.epochs": 2, "finetune.datasets": ["busi"]})


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """One cache (phantom root, decoded images, duplicates) for the module; runs per test."""
    cache = tmp_path_factory.mktemp("cache")
    old = {k: os.environ.get(k) for k in ("BUS_PAPER_CACHE", "BUS_PAPER_RUNS")}
    os.environ["BUS_PAPER_CACHE"] = str(cache)
    os.environ["BUS_PAPER_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def runs(workdirs, tmp_path, monkeypatch):
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_pretrain_then_finetune_end_to_end(runs):
    enc = pretrain(SMOKE)
    state = load_checkpoint(enc)  # weights_only=True
    assert state["n_images"] > 0 and "encoder" in state
    assert pretrain(SMOKE) == enc  # a finished stage is reused
    r = finetune(SMOKE, "busi", seed=0)
    assert r["pretrained"] and r["n"]["test"] > 0
    assert 0.0 <= r["metrics"]["auc"] <= 1.0
    assert 0.0 <= r["threshold"] <= 1.0
    ck = load_checkpoint(r["checkpoint"])
    assert ck["image_size"] == SMOKE.data.image_size and ck["classes"] == ["benign", "malignant"]
    preds = r["predictions"]
    assert set(preds.split) == {"val", "test"} and preds.prob.between(0, 1).all()
    # each image's cluster (its split group) goes with it, for the two-level bootstraps
    from bus_paper.train.data import load_labelled, resolve_root
    data = load_labelled(SMOKE, resolve_root(SMOKE, None), "busi")
    group = dict(zip(data.splits.path, data.splits.group.astype(str)))
    assert list(preds.cluster.astype(str)) == [group[p] for p in preds.path]
    # finished: only the deployable model stays (no resume/best-epoch checkpoints, ~2x the model)
    run_dir = Path(r["run_dir"])
    assert (run_dir / "model.pt").exists()
    assert not (run_dir / "best.pt").exists() and not (run_dir / "last.pt").exists()
    assert not (Path(enc).parent / "last.pt").exists()
    # the cached predictions are bit-identical to the in-memory ones, so are their metrics
    cached = finetune(SMOKE, "busi", seed=0)
    assert cached["predictions"].prob.dtype == np.float32
    np.testing.assert_array_equal(cached["predictions"].prob.to_numpy(), preds.prob.to_numpy())
    assert list(cached["predictions"].cluster.astype(str)) == list(preds.cluster.astype(str))
    test = cached["predictions"].query("split == 'test'")
    assert binary_metrics(test.label.to_numpy(), test.prob.to_numpy(), cached["threshold"]) == \
        {k: v for k, v in r["metrics"].items()}


def test_predictions_csv_round_trips_float32_exactly(tmp_path):
    from bus_paper.train.finetuning import read_predictions, write_predictions
    probs = np.random.default_rng(0).random(2000).astype(np.float32)
    probs[:3] = [np.float32(1 / 3), np.nextafter(np.float32(0.5), np.float32(1)), np.float32(1e-8)]
    df = pd.DataFrame({"path": [f"x{i}.png" for i in range(len(probs))], "split": "test",
                       "label": 0, "prob": probs})
    write_predictions(df, tmp_path / "p.csv")
    np.testing.assert_array_equal(read_predictions(tmp_path / "p.csv").prob.to_numpy(), probs)


def test_network_argument_and_model_families(runs, monkeypatch):
    """Any network config goes through the same engine (``network=``); a config with a ``family``
    is built by ``bus_paper.models.<family>.build_from_config``."""
    import types

    from bus_paper.models import build_network, family_builder
    from bus_paper.train.pretraining import baseline_config
    cfg = baseline_config(SMOKE, "mobilenetv2")
    enc = pretrain(SMOKE, network=cfg)
    assert enc == pretrain(SMOKE, baseline="mobilenetv2")  # same config, same run
    r = finetune(SMOKE, "busi", seed=0, network=cfg)
    assert r["model"] == "mobilenetv2" and r["pretrained"]
    with pytest.raises(ValueError, match="not both"):
        pretrain(SMOKE, network=cfg, baseline="resnet50")
    toy = types.ModuleType("bus_paper.models.toyfam")
    toy.build_from_config = lambda c: ("built", c["width"])
    monkeypatch.setitem(sys.modules, "bus_paper.models.toyfam", toy)
    assert build_network({"family": "toyfam", "width": 3}) == ("built", 3)
    with pytest.raises(KeyError, match="unknown model family"):
        family_builder("no_such_family")
    with pytest.raises(ValueError, match="module name"):
        family_builder("../evil")


def test_same_seed_same_metrics(runs, tmp_path, monkeypatch):
    a = finetune(SMOKE, "busi", seed=3, encoder_path=None)
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "other"))
    b = finetune(SMOKE, "busi", seed=3, encoder_path=None)
    np.testing.assert_allclose(a["predictions"].prob, b["predictions"].prob, rtol=0, atol=1e-6)
    assert a["metrics"] == b["metrics"]


def test_killed_run_resumes_and_matches_uninterrupted(runs, tmp_path, monkeypatch):
    profile = SMOKE.replace(**{"finetune.epochs": 3})
    full = finetune(profile, "busi", seed=1, encoder_path=None)

    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "killed"))
    calls = {"n": 0}
    real_validate = FinetuneStage.validate

    def dying_validate(self):
        calls["n"] += 1
        if calls["n"] == 2:  # die during epoch 2, after epoch 1 was checkpointed
            raise KeyboardInterrupt
        return real_validate(self)

    monkeypatch.setattr(FinetuneStage, "validate", dying_validate)
    with pytest.raises(KeyboardInterrupt):
        finetune(profile, "busi", seed=1, encoder_path=None)
    monkeypatch.setattr(FinetuneStage, "validate", real_validate)
    run_dir = next((tmp_path / "killed" / "finetune").iterdir())
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 0  # epoch 1 of 3 survived
    resumed = finetune(profile, "busi", seed=1, encoder_path=None)
    assert len(resumed["history"]) == 3
    np.testing.assert_allclose(resumed["predictions"].prob, full["predictions"].prob, atol=1e-6)


def test_predict_cli_reports_unreadable_and_writes_heatmaps(runs, tmp_path):
    from bus_paper.cli import main
    r = finetune(SMOKE, "busi", seed=0, encoder_path=None)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 70), dtype=np.uint8)).save(imgs / "a.png")
    Image.fromarray(rng.integers(0, 65535, (50, 80), dtype=np.uint16)).save(imgs / "b16.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(imgs / "c.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", r["checkpoint"], str(imgs), "--out", str(out),
                 "--heatmaps", str(tmp_path / "heat")]) == 0
    import pandas as pd
    df = pd.read_csv(out)
    assert sorted(Path(p).name for p in df.path) == ["a.png", "b16.png", "c.png"]
    assert df.prob_malignant.between(0, 1).all()
    assert set(df.prediction) <= {"benign", "malignant"}
    assert all(Path(h).exists() for h in df.heatmap)


@pytest.mark.slow
def test_ddp_two_cpu_processes(workdirs, tmp_path):
    """torchrun, 2 processes, gloo: every rank ends with the same weights, different from init."""
    env = {**os.environ, "BUS_PAPER_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert res[0]["world"] == res[1]["world"] == 2
    assert res[0]["checksum"] == pytest.approx(res[1]["checksum"], abs=0)
    assert res[0]["checksum"] != pytest.approx(res[0]["init_checksum"])
    assert res[0]["first_batch"] != res[1]["first_batch"]  # each rank trains on its own shard


def test_baseline_simclr_pretrain_and_finetune(runs):
    """A Table 1 baseline goes through the same engine: SimCLR pretraining of its own encoder,
    fine-tuning, a deployable checkpoint that rebuilds the baseline (not a BusNet)."""
    from bus_paper.models.baselines import BaselineNet
    from bus_paper.train import load_deployable
    enc = pretrain(SMOKE, baseline="resnet50")
    assert enc != pretrain(SMOKE)  # its own cache entry
    assert load_checkpoint(enc)["model_config"]["baseline"] == "resnet50"
    r = finetune(SMOKE, "busi", seed=0, baseline="resnet50")
    assert r["model"] == "resnet50" and r["pretrained"] and r["encoder_key"] in str(enc)
    model, state = load_deployable(r["checkpoint"])
    assert isinstance(model, BaselineNet) and model.name == "resnet50"
    proposed = finetune(SMOKE, "busi", seed=0)
    assert proposed["model"] == "proposed" and proposed["run_dir"] != r["run_dir"]


def test_finetune_refuses_an_encoder_of_another_model(runs):
    enc = pretrain(SMOKE, baseline="resnet50")
    with pytest.raises(ValueError, match="resnet50 encoder, but fine-tuning builds proposed"):
        finetune(SMOKE, "busi", seed=0, encoder_path=enc)


def test_dino_encoder_finetunes_as_its_baseline(runs):
    from bus_paper.train.dino import dino_pretrain
    enc = dino_pretrain(SMOKE, name="vit_small")  # the profile's [dino] section
    assert load_checkpoint(enc)["dino"]["out_dim"] == SMOKE.dino.out_dim == 64
    r = finetune(SMOKE, "busi", seed=0, encoder_path=enc, baseline="vit_small")
    assert r["model"] == "vit_small" and r["pretrained"]
    assert np.isfinite(r["metrics"]["accuracy"])


def test_ablation_variant_loads_the_full_models_encoder(runs):
    """No fusion / single scale change the heads' width only: the full model's pretrained encoder
    is loaded into the variant (matching weights), as the cpu ablation chapter does."""
    enc = pretrain(SMOKE)
    variant = SMOKE.replace(**{"model.fusion": False})
    r = finetune(variant, "busi", seed=0, encoder_path=enc)
    assert r["pretrained"] and r["encoder_key"] == load_checkpoint(enc)["key"]
    skipped = r["encoder_weights_not_loaded"]
    # the heads and the (re-indexed) fusion norms differ; every encoder weight is loaded
    assert "projector.0.weight" in skipped and not any(k.startswith("encoder.") for k in skipped)


def test_experiment_command_warms_the_cache_a_chapter_reads(runs, capsys):
    """`bus-paper experiment` runs exactly what the chapter's functions then find cached."""
    from bus_paper.cli import main
    from bus_paper.papers.p000 import experiments as ex
    assert main(["experiment", "ablations", "--profile", "smoke", "--only", "no_fusion",
                 "--dataset", "busi", "--seed", "0", "--set", "finetune.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "no_fusion" in out and "busi" in out and "AUC" in out
    same = load_profile("smoke").replace(**{"finetune.epochs": 2})  # what the command ran
    again = ex.ablation_runs(same, None, "no_fusion", ["busi"], [0])
    assert f"{again[0]['run_dir']}" in out  # same run, found in the cache


def test_predict_reproduces_the_runs_test_probabilities(runs):
    """`bus-paper predict` on the test images of a run gives the probabilities the run recorded:
    same preprocessing, normaliser, precision and memory format as the chapters' evaluation."""
    from bus_paper.train.data import resolve_root
    from bus_paper.train.predict import predict_paths
    r = finetune(SMOKE, "busi", seed=0, encoder_path=None)
    test = r["predictions"].query("split == 'test'")
    root = resolve_root(SMOKE, None)
    df, skipped = predict_paths(r["checkpoint"], [root / p for p in test.path])
    assert not skipped and len(df) == len(test)
    np.testing.assert_allclose(df.prob_malignant.to_numpy(), test.prob.to_numpy(), rtol=0, atol=1e-6)
