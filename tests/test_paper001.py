"""Paper 001's chapter logic: the plan, the comparisons, and a smoke run end to end."""

import doctest

import numpy as np
import pandas as pd
import pytest
import torch

from bus_paper.config import load_profile
from bus_paper.explain import saliency
from bus_paper.metrics import binary_metrics
from bus_paper.papers.p000.experiments import seed_table
from bus_paper.papers.p001 import experiments as p1
from bus_paper.train.pretraining import load_pretrained

SMOKE = load_profile("smoke")
CPU = load_profile("cpu")


def fake_run(y, prob, row, seed=0, dataset="busi", threshold=0.5):
    y, prob = np.asarray(y), np.asarray(prob, dtype=float)
    preds = pd.DataFrame({"path": [f"img{i:03d}.png" for i in range(y.size)], "split": "test",
                          "label": y, "prob": prob})
    return {"row": row, "dataset": dataset, "seed": seed, "threshold": threshold,
            "metrics": binary_metrics(y, prob, threshold), "predictions": preds}


def test_doctests():
    assert doctest.testmod(p1).failed == 0


def test_models_and_contrasts():
    assert p1.MODELS["proposed"].backbones == ("mobilenetv2", "densenet121")
    assert set(p1.CONTRASTS) == {k for k, m in p1.MODELS.items() if m.group == "ablation"}
    baselines = {m.baseline for m in p1.MODELS.values() if m.group == "baseline"}
    assert {"resnet50", "vgg16", "densenet121", "mobilenetv2"} <= baselines
    cfg = {k: p1.network_for(CPU, k) for k in p1.MODELS}
    assert cfg["resnet50"] is None and cfg["proposed"]["img_size"] == 96
    assert cfg["proposed"]["attention"] == "cbam" and cfg["no_attention"]["attention"] == "none"
    assert cfg["mobilenetv2_cbam"]["backbones"] == ["mobilenetv2"]
    # the ablations differ from the proposed model in one switch each
    for k in ("no_attention", "mobilenetv2_cbam", "densenet121_cbam"):
        differ = {f for f in cfg["proposed"] if cfg[k][f] != cfg["proposed"][f]}
        assert len(differ) == 1, (k, differ)
    assert cfg["proposed_random"] == cfg["proposed"] and not p1.MODELS["proposed_random"].ssl


def test_plan_defaults_and_overrides():
    keys = list(p1.MODELS)
    cpu = p1.default_plan("cpu", keys, [0, 1, 2])
    assert {k for k, s in cpu.seeds.items() if len(s) == 3} == {"proposed", "resnet50"}
    assert [k for k, v in cpu.ssl.items() if not v] == ["proposed_random", "vgg16"]
    assert cpu.label("vgg16") == "VGG16 (random init)" and cpu.label("resnet50") == "ResNet-50"
    gpu = p1.default_plan(load_profile("gpu"), keys, [0, 1])
    assert all(s == [0, 1] for s in gpu.seeds.values())
    assert [k for k, v in gpu.ssl.items() if not v] == ["proposed_random"]
    mine = p1.default_plan("cpu", ["proposed", "vgg16"], [4, 5], one_seed=[], random_init=[])
    assert mine.seeds == {"proposed": [4, 5], "vgg16": [4, 5]} and all(mine.ssl.values())
    with pytest.raises(KeyError, match="unknown model"):
        p1.default_plan("cpu", ["alexnet"], [0])
    with pytest.raises(ValueError, match="random_init is for baselines"):
        p1.default_plan("cpu", ["proposed"], [0], random_init=["proposed"])


def test_paired_table():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    good = [fake_run(y, np.clip(y * 0.7 + rng.random(120) * 0.4, 0, 1), "proposed", s)
            for s in range(2)]
    bad = [fake_run(y, rng.random(120), "vgg16")]
    same = [fake_run(y, good[0]["predictions"]["prob"], "mobilenetv2")]
    t = p1.paired_table(good + bad + same, n_boot=300)
    assert set(t["model"]) == {"vgg16", "mobilenetv2"} and set(t["metric"]) == {"auc", "accuracy"}
    auc = t[t["metric"] == "auc"].set_index("model")
    # where the interval lies, in words that are not verdicts (those are the claims table's)
    assert auc.loc["vgg16", "interval"] == "above 0" and auc.loc["vgg16", "seeds"] == "2 vs 1"
    assert auc.loc["mobilenetv2", "interval"] == "contains 0" and "verdict" not in t.columns


def test_findings_read_the_paired_table_and_compare_random_init_with_random_init():
    from bus_paper.papers.p000.experiments import paired_difference
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    sharp = lambda: np.clip(y * 0.7 + rng.random(120) * 0.4, 0, 1)
    proposed = [fake_run(y, sharp(), "proposed", s) for s in range(2)]
    results = [*proposed, fake_run(y, sharp(), "proposed_random"),
               fake_run(y, rng.random(120), "vgg16"), fake_run(y, rng.random(120), "resnet50"),
               fake_run(y, proposed[0]["predictions"]["prob"], "no_attention")]
    plan = p1.default_plan("cpu", ["proposed", "proposed_random", "no_attention", "resnet50",
                                   "vgg16"], [0, 1])
    paired = p1.paired_table(results, n_boot=200)
    lines = p1.findings(results, paired, pd.DataFrame(columns=["dataset", "method"]), plan,
                        ["busi"], CPU, n_boot=200)
    random, parts = lines[0], lines[1]
    # only the baseline trained from random init, against the proposed model from random init
    ref = paired_difference(results[2:3], results[3:4], "auc", n_boot=200)
    assert random.startswith("- **Both from random initialisation, BUSI**")
    assert f"VGG16 (random init) {ref['diff']:+.1f} ({ref['lo']:+.1f} to {ref['hi']:+.1f})" in random
    assert "ResNet-50" not in random
    assert parts.startswith("- **What each part adds, BUSI**")
    assert f"{p1.CONTRASTS['no_attention']}: +0.0 points" in parts and "interval contains 0" in parts
    assert "SSL initialisation" in parts and "interval " in parts
    assert lines[2] == "- **Explanations** (share of each map inside the lesion):"
    assert "96 px" in lines[-1] and "3x3 map" in lines[-1]
    smoke = p1.findings(results, paired, pd.DataFrame(columns=["dataset", "method"]), plan,
                        ["busi"], SMOKE, n_boot=200)
    assert "synthetic phantoms" in smoke[-1]
    assert not any("not tested" in line or "SimCLR encoders" in line for line in lines)
    # an encoder of the proposed model that did not learn: "what SSL adds" is not tested
    enc = pd.DataFrame({"backbone": ["mobilenetv2", "densenet121"], "epochs": [5, 5],
                        "first loss": [4.82, 4.6], "last loss": [4.70, 2.9],
                        "chance loss": [4.84, 4.84], "learned": [False, True]})
    told = p1.findings(results, paired, pd.DataFrame(columns=["dataset", "method"]), plan,
                       ["busi"], CPU, n_boot=200, encoders=enc)
    assert told[0].startswith("- **SimCLR encoders**") and told[1:] != lines[1:]
    assert "mobilenetv2 4.82 -> 4.70 (chance 4.84, 5 epochs): **did not learn**" in told[0]
    assert "densenet121 4.60 -> 2.90 (chance 4.84, 5 epochs): learned" in told[0]
    ssl_part = told[2].split("SSL initialisation")[1].split(";")[0]
    assert "not tested at this budget: the encoder of mobilenetv2 did not learn" in ssl_part
    assert "not tested" not in told[2].split(p1.CONTRASTS["no_attention"])[1]
    learned = enc.assign(learned=True)
    both = p1.findings(results, paired, pd.DataFrame(columns=["dataset", "method"]), plan,
                       ["busi"], CPU, n_boot=200, encoders=learned)
    assert both[1:] == lines and "did not learn" not in both[0]


def test_mean_roc_is_the_vertical_average():
    y = np.array([0, 0, 1, 1])
    perfect = fake_run(y, [0.1, 0.2, 0.8, 0.9], "a")
    reversed_ = fake_run(y, [0.9, 0.8, 0.2, 0.1], "a", seed=1)
    fpr, tpr, auc = p1.mean_roc([perfect])
    assert auc == 1 and tpr[0] == 0 and (tpr[1:] == 1).all()
    fpr, tpr, auc = p1.mean_roc([perfect, reversed_])
    assert auc == 0.5 and np.trapezoid(tpr, fpr) == pytest.approx(0.5, abs=0.02)


def test_smoke_run_end_to_end(phantom_root, capsys):
    """Pretrain MobileNetV2 and DenseNet121 (SimCLR, smoke), compose the fusion encoder,
    fine-tune the proposed model, its random-init ablation and a baseline, explain, summarise."""
    plan = p1.default_plan(SMOKE, ["proposed", "proposed_random", "mobilenetv2"], [0])
    results = p1.run_plan(SMOKE, phantom_root, plan, ["busi"])
    by = {r["row"]: r for r in results}
    assert set(by) == {"proposed", "proposed_random", "mobilenetv2"}
    assert by["proposed"]["pretrained"] and not by["proposed_random"]["pretrained"]
    assert by["proposed"]["model"] == "fusion" and by["mobilenetv2"]["model"] == "mobilenetv2"
    # the composed encoder holds the MobileNetV2 baseline's SimCLR weights in its branch
    cfg = p1.network_for(SMOKE, "proposed")
    enc = load_pretrained(p1.fusion_encoder(SMOKE, phantom_root, cfg))
    base = load_pretrained(p1.baseline_encoder(SMOKE, phantom_root, "mobilenetv2"))
    assert enc["key"] == by["proposed"]["encoder_key"]
    assert enc["sources"]["mobilenetv2"] == base["key"]
    assert torch.equal(enc["encoder"]["branches.mobilenetv2.conv_stem.weight"],
                       base["encoder"]["backbone.conv_stem.weight"])
    assert all(k.startswith(("branch_attention.", "projector.")) for k in enc["not_pretrained"])
    # the learning check of each SimCLR encoder the plan starts from (fusion: its backbones')
    enc_t = p1.encoder_table(SMOKE, phantom_root, plan)
    assert list(enc_t["backbone"]) == ["mobilenetv2", "densenet121"]
    row = enc_t.set_index("backbone").loc["mobilenetv2"]
    assert row["key"] == base["key"] and row["epochs"] == len(base["history"])
    assert row["last loss"] == base["history"][-1]["train_loss"]
    assert row["used by"] == "proposed, mobilenetv2" and row["learned"] in (True, False)
    assert enc_t.set_index("backbone").loc["densenet121", "used by"] == "proposed"
    # cached: the same runs come back without training
    again = p1.model_runs(SMOKE, phantom_root, "proposed", ["busi"], [0])
    assert again[0]["run_dir"] == by["proposed"]["run_dir"]
    # `bus-paper experiment paper001` trains (here: finds) what the chapter reads, by the
    # chapter's defaults: the proposed model always, then the models asked for
    from bus_paper import cli
    assert cli.main(["-q", "experiment", "paper001", "--profile", "smoke", "--data-root",
                     str(phantom_root), "--only", "mobilenetv2", "--dataset", "busi",
                     "--seed", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["proposed", "mobilenetv2"]
    assert out[0].endswith(by["proposed"]["run_dir"]) and out[1].endswith(by["mobilenetv2"]["run_dir"])

    table = seed_table(results, n_boot=50)
    assert set(table["row"]) == set(by)
    test, images, masks, maps, scores = p1.explain_run(by["proposed"], SMOKE, phantom_root,
                                                       smoothgrad_n=2, shap_nsamples=3,
                                                       n_background=4)
    assert list(maps) == list(saliency.METHODS) and images.shape == masks.shape
    assert len(scores) == len(test) * len(saliency.METHODS)
    scored = scores[scores["has_mask"]]
    assert len(scored) and scored["energy"].between(0, 1).all()
    assert set(scores["dataset"]) == {"busi"} and set(scores["model"]) == {"proposed"}
