"""Analysis helpers: kNN probe, retrieval, 2-D maps, seed-pooled CIs, paper comparison, plots."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from bus_paper.config import ModelConfig, RunConfig, load_profile
from bus_paper.metrics import bootstrap_ci
from bus_paper.papers.p000 import analysis
from bus_paper.train.data import Normalizer


def two_clusters(n=60, d=16, gap=4.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["benign", "malignant"] * (n // 2))
    centre = np.where(y == "malignant", gap, -gap)[:, None] * np.eye(d)[0]
    return rng.normal(size=(n, d)) + centre, y


def test_paper_numbers_are_table_1():
    t = analysis.paper_000_numbers().set_index("dataset")
    assert t.loc["udiat", ["accuracy", "precision", "recall", "f1", "auc"]].tolist() == \
        [96.45, 95.20, 96.80, 96.00, 98.10]
    assert t.loc["busi", ["accuracy", "precision", "recall", "f1", "auc"]].tolist() == \
        [95.80, 94.30, 95.10, 94.70, 97.25]
    assert t["specificity"].isna().all()  # not reported, not invented


def test_nearest_returns_the_item_itself_first():
    emb = np.random.default_rng(1).normal(size=(20, 8))
    idx, sim = analysis.nearest(emb, emb, k=5)
    assert idx.shape == sim.shape == (20, 5)
    assert (idx[:, 0] == np.arange(20)).all()
    np.testing.assert_allclose(sim[:, 0], 1.0, atol=1e-12)
    assert (np.diff(sim, axis=1) <= 1e-12).all()  # most similar first
    # cosine: scaling a vector does not change its neighbours
    idx2, _ = analysis.nearest(emb * 7.0, emb, k=5)
    assert (idx2 == idx).all()
    with pytest.raises(ValueError, match="k must be"):
        analysis.nearest(emb, emb, k=21)


def test_knn_agreement_separable_vs_random():
    emb, y = two_clusters()
    groups = np.arange(len(y))
    sep = analysis.knn_label_agreement(emb, y, groups, k=5)
    assert sep["accuracy"] == 1.0 and sep["auc"] == 1.0 and sep["balanced_accuracy"] == 1.0
    aucs = [analysis.knn_label_agreement(np.random.default_rng(s).normal(size=(200, 16)),
                                         np.array(["benign", "malignant"] * 100),
                                         np.arange(200))["auc"] for s in range(5)]
    assert 0.4 < np.mean(aucs) < 0.6
    assert sep["majority_baseline"] == 0.5 and sep["n"] == 60 and sep["k"] == 5


def test_knn_leaves_whole_groups_out():
    # Each group is 3 copies of one random point with a random label: copies are each other's
    # nearest neighbours, so a probe that only leaves the image itself out scores ~1 by memory.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(60, 16))
    labels = rng.choice(["benign", "malignant"], size=60)
    emb = np.repeat(centres, 3, axis=0) + 1e-3 * rng.normal(size=(180, 16))
    y, g = np.repeat(labels, 3), np.repeat(np.arange(60), 3)
    leaky = analysis.knn_label_agreement(emb, y, np.arange(180), k=2)
    fair = analysis.knn_label_agreement(emb, y, g, k=2)
    assert leaky["accuracy"] == 1.0
    assert fair["auc"] < 0.75 and fair["accuracy"] < 0.75


def test_knn_checks_its_input():
    emb, y = two_clusters(n=10)
    with pytest.raises(ValueError, match="differ in length"):
        analysis.knn_label_agreement(emb, y[:-1], np.arange(10))
    with pytest.raises(ValueError, match="outside its own group"):
        analysis.knn_label_agreement(emb, y, np.zeros(10))
    assert analysis.knn_label_agreement(emb, y, np.arange(10) // 5, k=50)["k"] == 5  # capped


def test_knn_probe_table_pairs_the_encoders_and_resamples_groups():
    # a separable embedding against a random one, on groups of 3 near-copies: the difference is
    # clearly positive, the AUCs are knn_label_agreement's, and the intervals count groups
    rng = np.random.default_rng(3)
    centres, labels = two_clusters(n=60, gap=1.5, seed=1)
    emb_sep = np.repeat(centres, 3, axis=0) + 0.01 * rng.normal(size=(180, 16))
    emb_rand = rng.normal(size=(180, 16))
    rows = pd.DataFrame({"dataset": "busi", "label": np.repeat(labels, 3),
                         "group": np.repeat(np.arange(60), 3)})
    rows.loc[0, "label"] = "normal"   # normal images are not probed
    probe, diff = analysis.knn_probe_table({"SSL": emb_sep, "random": emb_rand}, rows,
                                           ["busi", "udiat"], n_boot=500)
    assert list(probe["encoder"]) == ["SSL", "random"] and list(diff["dataset"]) == ["busi"]
    m = (rows["label"] != "normal").to_numpy()
    for name, emb in (("SSL", emb_sep), ("random", emb_rand)):
        r = probe.set_index("encoder").loc[name]
        plain = analysis.knn_label_agreement(emb[m], rows.loc[m, "label"], rows.loc[m, "group"])
        assert r["auc_pct"] == pytest.approx(100 * plain["auc"])
        assert r["ci_low"] <= r["auc_pct"] <= r["ci_high"] and r["groups"] == 60
    d = diff.iloc[0]
    assert d["n"] == 179 and d["groups"] == 60
    assert d["difference"] == pytest.approx(probe["auc_pct"].iloc[0] - probe["auc_pct"].iloc[1])
    assert d["ci_low"] > 0
    assert "carries more label information than the random one" in \
        analysis.describe_knn_probe(probe, diff)
    # the same embedding on both sides: a difference of exactly 0, an interval that includes it
    probe0, diff0 = analysis.knn_probe_table({"a": emb_rand, "b": emb_rand}, rows, ["busi"],
                                             n_boot=200)
    assert diff0.iloc[0][["difference", "ci_low", "ci_high"]].tolist() == [0, 0, 0]
    assert "includes 0" in analysis.describe_knn_probe(probe0, diff0)


def test_embedding_2d_pca_and_tsne():
    emb, _ = two_clusters(n=20)
    few = analysis.embedding_2d(emb, seed=0)            # PCA only below min_tsne
    assert few.shape == (20, 2) and np.isfinite(few).all()
    emb, y = two_clusters(n=80, gap=6.0)
    a, b = analysis.embedding_2d(emb, seed=3), analysis.embedding_2d(emb, seed=3)
    assert a.shape == (80, 2)
    np.testing.assert_allclose(a, b)                    # seeded: reproducible
    # the two clusters stay apart in the map: nearest 2-D neighbour has the same label
    d = ((a[:, None] - a[None]) ** 2).sum(-1) + np.eye(80) * 1e9
    assert (y[d.argmin(1)] == y).mean() > 0.95
    with pytest.raises(ValueError, match="at least 3"):
        analysis.embedding_2d(emb[:2])


def test_seed_mean_ci_counts_seeds_and_clusters():
    """The seed mean of each metric, with an interval that resamples seeds and then clusters of
    test images: one seed without clusters is an image bootstrap; a second, different seed widens
    the interval; clusters of duplicate images do not narrow it."""
    from bus_paper.metrics import binary_metrics
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p1 = np.clip(y * 0.5 + rng.uniform(0, 0.6, 80), 0, 1)
    p2 = np.clip(y * 0.1 + rng.uniform(0, 0.9, 80), 0, 1)   # a seed that learned much less
    one = analysis.seed_mean_ci(y, [p1], [0.5], n_boot=2000, seed=4)
    ref = bootstrap_ci(y, p1, 0.5, n_boot=2000, seed=4)
    for m, (lo, hi) in ref.items():
        assert one[m][0] == pytest.approx(binary_metrics(y, p1, 0.5)[m])
        assert one[m][1:] == pytest.approx((lo, hi), abs=0.03)   # another draw, the same bootstrap
    two = analysis.seed_mean_ci(y, [p1, p2], [0.5, 0.4], n_boot=2000, seed=4)
    assert two["auc"][0] == pytest.approx(np.mean([binary_metrics(y, p, 0.5)["auc"] for p in (p1, p2)]))
    assert two["f1"][0] == pytest.approx(np.mean([binary_metrics(y, p, t)["f1"]
                                                  for p, t in ((p1, 0.5), (p2, 0.4))]))
    assert two["auc"][2] - two["auc"][1] > 1.3 * (one["auc"][2] - one["auc"][1])
    dup = analysis.seed_mean_ci(np.repeat(y, 2), [np.repeat(p1, 2)], [0.5], n_boot=2000, seed=4,
                                clusters=np.repeat(np.arange(80), 2))
    assert dup["auc"] == pytest.approx(one["auc"])
    with pytest.raises(ValueError, match="one threshold per seed"):
        analysis.seed_mean_ci(y, [p1, p2], [0.5])


def fake_result(dataset, seed, y, prob, threshold=0.5):
    from bus_paper.metrics import binary_metrics
    preds = pd.DataFrame({"path": [f"{dataset}/{i:03d}.png" for i in range(len(y))],
                          "split": "test", "label": y, "prob": prob})
    return {"dataset": dataset, "seed": seed, "threshold": threshold, "predictions": preds,
            "metrics": binary_metrics(y, prob, threshold)}


def test_comparison_table_and_verdict():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    perfect = fake_result("udiat", 0, y, y * 0.8 + 0.1)
    noisy = [fake_result("busi", s, y, rng.uniform(0, 1, 100)) for s in (0, 1)]
    t = analysis.comparison_table([perfect, *noisy], n_boot=100)
    assert len(t) == 2 * 6 and set(t["seeds"]) == {1, 2}
    u = t[t.dataset == "udiat"].set_index("metric")
    assert u.loc["auc", "measured"] == 100.0 and u.loc["auc", "paper"] == 98.10
    assert not u.loc["auc", "paper_in_ci"]               # 98.1 < the perfect model's [100, 100]
    assert pd.isna(u.loc["specificity", "paper_in_ci"])  # nothing reported to compare
    b = t[t.dataset == "busi"].set_index("metric")
    assert np.isfinite(b.loc["auc", "sd_over_seeds"])
    assert b.loc["auc", "ci_high"] < b.loc["auc", "paper"]  # chance-level model
    assert "below it for" in analysis.verdict(t, "udiat")
    assert "above it for" in analysis.verdict(t, "busi") and "auc" in analysis.verdict(t, "busi")
    shifted = noisy[1]["predictions"].assign(path=lambda d: d.path + "x")
    with pytest.raises(ValueError, match="different images"):
        analysis.comparison_table([noisy[0], {**noisy[1], "predictions": shifted}])


def test_plots_draw_what_they_return():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.7, 0.4, 0.8, 0.9])
    fig, (a, b) = plt.subplots(1, 2)
    assert analysis.plot_roc(a, y, p, "x") == pytest.approx(5 / 6)
    assert np.isnan(analysis.plot_roc(a, np.ones(5), p))
    cm = analysis.plot_confusion(b, y, p, threshold=0.5)
    assert cm.tolist() == [[1, 1], [1, 2]]               # rows: truth; columns: prediction
    plt.close(fig)


def test_embed_matches_encode_and_pretrained_roundtrip():
    cfg = ModelConfig(scales=(64, 32))
    model = analysis.random_encoder(cfg.__dict__, seed=0)
    again = analysis.random_encoder(cfg.__dict__, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))
    x = torch.randint(0, 256, (5, 1, 64, 64), dtype=torch.uint8)
    norm, run = Normalizer(0.3, 0.2), RunConfig(device="cpu", precision="fp32")
    emb = analysis.embed(model, x, norm, run, batch_size=2)
    assert emb.shape == (5, model.feature_dim) and emb.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(emb, model.encode(norm(x.float() / 255)).numpy(), atol=1e-4)
    state = {"encoder": model.encoder_state_dict(), "model_config": cfg.__dict__}
    loaded = analysis.encoder_from_pretrained(state)
    np.testing.assert_allclose(analysis.embed(loaded, x, norm, run), emb, atol=1e-5)
    other = analysis.random_encoder(cfg.__dict__, seed=1)
    assert not np.allclose(analysis.embed(other, x, norm, run), emb, atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        analysis.embed(model, x.float(), norm, run)
    with pytest.raises(KeyError, match="load_pretrained"):
        analysis.encoder_from_pretrained({"encoder": {}})


def test_embedding_sample_on_phantoms(phantom_root):
    profile = load_profile("smoke")
    rows, x = analysis.embedding_sample(profile, phantom_root, n_per_dataset=5, seed=0)
    assert x.dtype == torch.uint8 and x.shape == (len(rows), 1, 64, 64)
    assert rows.groupby("dataset").size().to_dict() == {d: 5 for d in
                                                       ("busbra", "busuclm", "busi", "udiat")}
    assert not rows.loc[rows.dataset.isin(["busi", "udiat"]), "in_pool"].any()
    assert rows.loc[rows.dataset.isin(["busbra", "busuclm"]), "in_pool"].any()
    assert rows["group"].notna().all()
    with pytest.raises(ValueError, match="n_per_dataset"):
        analysis.embedding_sample(profile, phantom_root, 0)
