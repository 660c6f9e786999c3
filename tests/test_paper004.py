"""Paper 004's pipeline: preprocessing switches and ROI crops, mini-MIAS parsing and splits by
woman, the attention fusion module, classifier selection inside the training part, metrics with
specificity and cluster-bootstrap intervals, the torch copies Grad-CAM uses, and a smoke run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bus_paper.data.splits import make_splits
from bus_paper.papers.p004 import classical, evaluate, fusion, prep
from bus_paper.papers.p004.mias import film_label, parse_info, read_lesions, read_mias, woman_of
from bus_paper.papers.p004.phantom_mias import mias_root, write_mias_phantom


@pytest.fixture(scope="module")
def mias(tmp_path_factory):
    return write_mias_phantom(tmp_path_factory.mktemp("mias") / "data", n_women=24, side=256)


# ----------------------------------------------------------------------------- preprocessing
def _noisy(seed=0, n=96):
    rng = np.random.default_rng(seed)
    img = np.full((n, n), 100, np.uint8)
    img[30:60, 30:60] = 130                                   # a low-contrast square
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def test_each_filter_is_a_switch():
    img = _noisy()
    off = prep.Prep(median=0, gaussian=0, clahe=0)
    assert np.array_equal(prep.enhance(img, off), img)
    med = prep.enhance(img, dataclasses.replace(off, median=3))
    gau = prep.enhance(img, dataclasses.replace(off, gaussian=1.5))
    assert not np.array_equal(med, img) and not np.array_equal(gau, img)
    # both filters remove noise: the flat background gets smoother
    bg = (slice(65, 95), slice(0, 95))
    assert med[bg].std() < img[bg].std() and gau[bg].std() < img[bg].std()
    with pytest.raises(ValueError):
        prep.Prep(median=4)
    with pytest.raises(ValueError):
        prep.Prep(context=0.5)


def test_clahe_raises_local_contrast():
    from scipy.ndimage import gaussian_filter, uniform_filter
    rng = np.random.default_rng(0)
    texture = gaussian_filter(rng.normal(size=(128, 128)), 2)
    img = np.clip(110 + 60 * texture / texture.std() * 0.15, 0, 255).astype(np.uint8)  # flat, dull
    out = prep.clahe(img, 2.0, 8)

    def local_std(a):
        a = a.astype(float)
        return np.sqrt(np.maximum(uniform_filter(a ** 2, 9) - uniform_filter(a, 9) ** 2, 0)).mean()

    assert local_std(out) > 1.5 * local_std(img)
    assert np.ptp(np.percentile(out, [1, 99])) > np.ptp(np.percentile(img, [1, 99]))
    assert np.array_equal(prep.clahe(img, 0, 8), img)          # clip 0: off


def test_roi_crop_around_a_given_centre_and_radius():
    img = np.zeros((200, 300), np.uint8)
    mask = prep.circle_mask(img.shape, 80, 220, 15)
    img[mask] = 255
    p = prep.Prep(context=1.5, min_side=0.05)
    r, c, side = prep.circle_box(80, 220, 15, img.shape, p)
    assert (r, c, side) == (80, 220, 45.0)                     # 1.5 x the diameter
    crop = prep.crop_square(img, r, c, side)
    assert crop.shape == (45, 45) and crop[22, 22] == 255 and crop[0, 0] == 0
    assert crop[22, 22 - 14] == 255 and crop[22, 22 - 17] == 0  # radius 15 around the centre
    # a small lesion still gets the minimum side; a crop over the border is padded with black
    assert prep.circle_box(0, 0, 1, img.shape, prep.Prep(min_side=0.2))[2] == 60
    edge = prep.crop_square(np.full((50, 50), 7, np.uint8), 0, 0, 20)
    assert edge[:10, :10].sum() == 0 and (edge[10:, 10:] == 7).all()
    box = prep.mask_box(mask, p)
    assert box[0] == pytest.approx(80, abs=1) and box[1] == pytest.approx(220, abs=1)
    assert box[2] == pytest.approx(1.5 * 31, abs=1.5)


def test_mias_rois_put_the_lesion_in_the_middle(mias):
    roi = prep.roi_set("mias", mias, prep.Prep(), 48)
    f = roi.frame
    lesion = (f["source"] == "lesion circle").to_numpy()
    assert lesion.sum() > 0 and set(f.loc[~lesion, "label"]) >= {"normal"}
    # the outline of a lesion crop is centred; tissue crops have none
    for i in np.flatnonzero(lesion):
        ys, xs = np.nonzero(roi.masks[i])
        assert abs(ys.mean() - 23.5) < 4 and abs(xs.mean() - 23.5) < 4
    assert not roi.masks[~lesion].any()
    # normal crops sit on the breast and borrow lesion sizes: not mostly background
    assert np.median(roi.images[~lesion].reshape((~lesion).sum(), -1).mean(1)) > 40
    # the ROI off: the whole film
    whole = prep.roi_set("mias", mias, prep.Prep(roi=False), 48)
    assert (whole.frame["side"] == 256).all()


def test_augmented_copies_are_deterministic_and_differ():
    imgs = np.stack([_noisy(i, 32) for i in range(4)])
    a = prep.augmented_copies(imgs, 2)
    assert a.shape == (2, 4, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, prep.augmented_copies(imgs, 2))
    assert not np.array_equal(a[0], imgs) and not np.array_equal(a[0], a[1])


def test_image_z_score():
    x = torch.rand(3, 1, 16, 16) * 0.5 + torch.arange(3).view(3, 1, 1, 1) * 0.2
    z = prep.ImageZ(True)(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3)), torch.ones(3), atol=1e-2)
    assert torch.equal(prep.ImageZ(False)(x), x)


# ----------------------------------------------------------------------------- mini-MIAS
def test_info_parsing():
    text = ("header line\nmdb001 G CIRC B 535 425 197\nmdb002 G NORM \nmdb005 F CIRC B 477 133 30\n"
            "mdb005 F CIRC M 500 168 26\nmdb216 D CALC M *NOTE 3* \nmdb059 F CIRC B\n")
    les = parse_info(text)
    assert [le.ref for le in les] == ["mdb001", "mdb002", "mdb005", "mdb005", "mdb216", "mdb059"]
    assert les[0].located and (les[0].x, les[0].y, les[0].radius) == (535, 425, 197)
    assert les[1].severity is None and not les[4].located and not les[5].located
    assert film_label(les[2:4]) == "malignant" and film_label([les[1]]) == "normal"
    assert woman_of("mdb001") == woman_of("mdb002") == 1 and woman_of("mdb003") == 2


def test_phantom_reads_like_the_real_layout(mias):
    frame, issues = read_mias(mias)
    assert len(frame) == 48 and frame["patient_id"].nunique() == 24
    assert set(frame["label"]) == {"normal", "benign", "malignant"}
    assert {i.kind for i in issues} == {"bad_metadata", "label_conflict"}
    assert read_lesions(mias)["located"].sum() >= 15
    assert mias_root(mias, synthetic=False) == mias


@pytest.mark.parametrize("labels", [("normal", "benign", "malignant"), ("benign", "malignant")])
def test_splits_by_woman_never_share_a_woman(mias, labels):
    frame = read_mias(mias)[0]
    cfg = dataclasses.replace(make_splits.__kwdefaults__["cfg"], val_fraction=0.0,
                              test_fraction=0.2)
    parts = set()
    for seed in range(4):
        s = make_splits(frame, "mias", seed, cfg=cfg, labels=labels)
        woman = s["path"].map(frame.set_index("path")["patient_id"])
        assert (s.groupby(woman)["split"].nunique() == 1).all()
        assert set(s["split"]) == {"train", "test"} and set(s["label"]) == set(labels)
        parts.add(tuple(s["split"]))
    assert len(parts) > 1                                        # seeds draw other splits


# ----------------------------------------------------------------------------- fusion
def _toy(n=240, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = rng.normal(size=(n, 8))
    b = rng.normal(size=(n, 5))
    b[:, 0] += 3 * (2 * y - 1)                                  # only block b carries the class
    return [a.astype(np.float32), b.astype(np.float32)], y


def test_attention_fusion_shapes():
    m = fusion.AttentionFusion([8, 5, 3], width=16, heads=4, hidden=12)
    xs = [torch.randn(7, d) for d in (8, 5, 3)]
    e, w = m.embed(xs, weights=True)
    assert m(xs).shape == (7, 2) and e.shape == (7, 12) and w.shape == (7, 3)
    assert torch.allclose(w.sum(1), torch.ones(7), atol=1e-5)
    with pytest.raises(ValueError):
        m(xs[:2])


def test_attention_fusion_learns_a_separable_problem():
    (a, b), y = _toy(300)
    groups = np.arange(len(y))
    fit = fusion.train_fusion([a[:200], b[:200]], y[:200], groups[:200], seed=0, epochs=80,
                              width=16, hidden=16)
    with torch.no_grad():
        acc = (fit.model([torch.as_tensor(a[200:]), torch.as_tensor(b[200:])]).argmax(1).numpy()
               == y[200:]).mean()
    assert acc > 0.9
    emb, w = fusion.fused_features(fit.model, [a[200:], b[200:]])
    assert emb.shape == (100, 16) and np.allclose(w.sum(1), 1, atol=1e-5)
    # deterministic for a seed
    again = fusion.train_fusion([a[:200], b[:200]], y[:200], groups[:200], seed=0, epochs=80,
                                width=16, hidden=16)
    assert np.allclose(fusion.fused_features(again.model, [a[200:], b[200:]])[0], emb, atol=1e-5)


# ----------------------------------------------------------------------------- classifiers
def test_inner_folds_keep_groups_and_copies_apart():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 2)
    y = np.repeat(rng.integers(0, 2, 30), 2)
    is_copy = np.zeros(60, bool)
    # one augmented copy of every row, appended
    groups, y, is_copy = np.tile(groups, 2), np.tile(y, 2), np.repeat([False, True], 60)
    folds = classical.inner_folds(y, groups, is_copy, k=3, seed=0)
    val_all = np.concatenate([v for _, v in folds])
    assert len(folds) == 3 and sorted(val_all) == list(range(60))   # every original once
    for fit_rows, val_rows in folds:
        assert not is_copy[val_rows].any()
        assert not set(groups[fit_rows]) & set(groups[val_rows])
        assert is_copy[fit_rows].any()


def test_selection_sees_only_the_training_rows(monkeypatch):
    """Every fit (reduction and classifier) inside the selection gets rows of the training part
    it was given, never a row of its own validation fold."""
    rng = np.random.default_rng(1)
    n = 90
    X = rng.normal(size=(n, 12))
    y = (X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
    X[:, -1] = np.arange(n)                       # row id, carried through the reducer (no PCA)
    groups = np.arange(n) // 3
    seen = []
    real = classical.BlockReducer.fit

    def spy(self, Xf, yf=None):
        seen.append(np.asarray(Xf)[:, -1].astype(int).copy())
        return real(self, Xf, yf)

    monkeypatch.setattr(classical.BlockReducer, "fit", spy)
    blocks = [(0, 11, True), (11, 12, False)]
    out = classical.select_and_fit(X, y, groups, None, blocks, ("knn", "svm"), n_components=4,
                                   k=3, seed=0)
    folds = classical.inner_folds(y, groups, np.zeros(n, bool), 3, 0)
    for ids, (fit_rows, val_rows) in zip(seen[:3], folds):
        assert set(ids) == set(fit_rows) and not set(ids) & set(val_rows)
    assert set(seen[3]) == set(range(n))          # the refit: the whole training part, once
    for f in out.values():
        assert 0.5 < f.cv_auc <= 1 and np.isfinite(f.threshold)
        assert f.predict(X).mean() > 0.2


def test_classifiers_learn_and_give_thresholds_on_their_own_scale():
    rng = np.random.default_rng(2)
    latent = rng.normal(size=(160, 3))             # features: a noisy mix of 3 factors
    X = latent @ rng.normal(size=(3, 30)) + 0.3 * rng.normal(size=(160, 30))
    y = (latent.sum(1) > 0).astype(int)
    out = classical.select_and_fit(X[:120], y[:120], np.arange(120), None, [(0, 30, True)],
                                   n_components=10, k=3, seed=0, rf_trees=30, nn_max_iter=100)
    assert set(out) == set(classical.CLASSIFIERS)
    for name, f in out.items():
        assert roc_auc_score(y[120:], f.score(X[120:])) > 0.75, name
    # the SVM's margin is not a probability: its threshold must not be capped at 1
    assert evaluate.youden_threshold(np.array([0, 0, 1, 1]), np.array([0.5, 1.5, 3.0, 4.0])) == 3.0


# ----------------------------------------------------------------------------- metrics
def test_metrics_with_specificity_and_auc():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.1, 0.4])
    pred = (score >= 0.5).astype(int)
    m = evaluate.point_metrics(evaluate.Part(y, score, pred, np.arange(8)))
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 4)
    assert m["specificity"] == pytest.approx(4 / 5) and m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["auc"] == pytest.approx(roc_auc_score(y, score))
    rng = np.random.default_rng(0)
    yy, ss = rng.integers(0, 2, 50), rng.normal(size=50).round(1)    # with ties
    w = rng.integers(0, 3, (5, 50))
    for row in w:
        keep = np.repeat(np.arange(50), row)
        if 0 < yy[keep].sum() < len(keep):
            assert evaluate.weighted_auc(yy, ss, row[None])[0] == pytest.approx(
                roc_auc_score(yy[keep], ss[keep]))


def test_cluster_bootstrap_draws_whole_groups_and_brackets_the_value():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    w = evaluate.cluster_weights(groups, 200, np.random.default_rng(0))
    assert w.shape == (200, 6) and (w.sum(1) == w.sum(1)).all()
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()   # a group moves as one
    assert np.allclose(w[:, [0, 2, 3]].sum(1), 3)                      # 3 groups drawn
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(2):
        y = rng.integers(0, 2, 80)
        s = y + rng.normal(0, 0.8, 80)
        parts.append(evaluate.Part(y, s, (s > 0.5).astype(int), np.arange(80) // 2))
    ci = evaluate.repeat_mean_ci(parts, 300)
    for m, (v, lo, hi) in ci.items():
        assert lo <= v <= hi, m
    d = evaluate.paired_difference(parts, parts, "auc", 100)
    assert d["diff"] == 0 and d["lo"] == d["hi"] == 0


# ----------------------------------------------------------------------------- Grad-CAM copies
def test_torch_copies_reproduce_the_fitted_reduction_and_mlp():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 20)) * rng.uniform(0.5, 3, 20) + rng.normal(size=20)
    y = (X[:, 0] - X[:, 5] > 0).astype(int)
    f = classical.select_and_fit(X, y, np.arange(120), None, [(0, 12, True), (12, 20, False)],
                                 ("nn",), n_components=6, k=3, seed=0, nn_max_iter=100)["nn"]
    blocks = [b(torch.as_tensor(X[:, a:e], dtype=torch.float32))
              for b, (a, e, _) in zip(fusion.reducer_modules(f.reducer), f.reducer.blocks)]
    z = torch.cat(blocks, 1)
    assert np.allclose(z.numpy(), f.reducer.transform(X), atol=1e-4)
    p = torch.softmax(fusion.MLPHead(f.model)(z), 1)[:, 1].detach().numpy()
    assert np.allclose(p, f.score(X), atol=1e-4)


def test_feature_classifier_runs_grad_cam():
    from bus_paper import explain
    from bus_paper.models.baselines import build_baseline
    torch.manual_seed(0)
    net = build_baseline("resnet50", 64).eval()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2048))
    red = classical.BlockReducer([(0, 2048, True)], 4).fit(X)
    head = fusion.AttentionFusion([red.parts_[0][1].n_components_], width=8, heads=2, hidden=8)
    model = fusion.FeatureClassifier([net], red, head.eval(), "list")
    imgs = (rng.random((3, 64, 64)) * 255).astype(np.uint8)
    hm = explain.heatmaps(model, imgs, prep.ImageZ(True), targets=[0, 1, 1])
    assert hm.cams.shape == (3, 64, 64) and hm.map_size == (2, 2)


# ----------------------------------------------------------------------------- smoke end to end
@pytest.mark.slow
def test_run_task_smoke_end_to_end(mias):
    from bus_paper.config import load_profile
    from bus_paper.papers.p004 import report, run
    p = load_profile("smoke")
    s = run.Settings(backbones=("resnet50", "efficientnet_b0"), classifiers=("knn", "nn"),
                     rf_trees=10, nn_max_iter=40, n_boot=50)
    res = run.run_task("mias_malignant", p, mias, [0, 1], s)
    assert set(res.predictions["repeat"]) == {0, 1}
    keys = {fs.key for fs in res.sets}
    assert keys == {"resnet50", "efficientnet_b0", "concat", "attention", "random_concat"}
    for r in res.repeats:                      # test images are never training images
        assert not set(r.train) & set(r.test)
        woman = res.roi.frame["patient_id"].to_numpy()
        assert not set(woman[r.train]) & set(woman[r.test])
    t = run.metrics_table(res)
    assert len(t) == 5 * 2 and t[["auc", "accuracy", "specificity"]].notna().all().all()
    assert ((t["tp"] + t["fp"] + t["tn"] + t["fn"]) == t["test images"] * 2).all()
    assert len(res.attention) == sum(len(r.test) for r in res.repeats)
    _, _, info = report.gradcam_task(res, p)
    # the torch copy in fp32 vs the NN on bf16-extracted features: close, not equal
    assert set(info["model"]) == {"cnn", "fusion"} and info["max |p - NN p|"].dropna().max() < 0.2
    ranges = report.range_claims({"mias_malignant": t})   # the measurements the claims judge
    assert len(ranges) == 6 and ranges[["measured", "lo", "hi"]].notna().all().all()
    assert "verdict" not in ranges.columns


def test_encoder_table_gives_each_ssl_encoder_its_own_chance_loss(tmp_path):
    """What paper 004's SSL learning checks read: one row per task and SSL encoder (random init
    has none), first and last loss, and the chance loss of that run: ln(2N - 1) with the batch
    N, or with the pool when the pool is smaller than a batch."""
    import json
    import math
    from types import SimpleNamespace

    from bus_paper.config import load_profile
    from bus_paper.papers.p004.features import Encoder
    from bus_paper.papers.p004.run import encoder_table

    def saved(name, losses, n_images):
        path = tmp_path / name / "encoder.pt"
        path.parent.mkdir()
        torch.save({"history": json.dumps([{"train_loss": v} for v in losses]),
                    "n_images": n_images}, path)
        return path

    big = Encoder("resnet50", "ssl", "mammography", saved("a", [4.8, 3.9], 322))
    small = Encoder("vgg16", "ssl", "ultrasound", saved("b", [2.0, 1.5, 1.2], 10))
    results = {"mias_abnormal": SimpleNamespace(encoders={
                   (0, "resnet50", "ssl"): big, (1, "resnet50", "ssl"): big,   # two repeats
                   (0, "resnet50", "random"): Encoder("resnet50", "random", "mammography")}),
               "busi": SimpleNamespace(encoders={(0, "vgg16", "ssl"): small})}
    t = encoder_table(results, load_profile("cpu")).set_index(["task", "backbone"])
    assert list(t.index) == [("mias_abnormal", "resnet50"), ("busi", "vgg16")]
    assert t.loc[("mias_abnormal", "resnet50"), "chance loss"] == pytest.approx(math.log(127))
    assert t.loc[("busi", "vgg16"), "chance loss"] == pytest.approx(math.log(19))
    assert t.loc[("busi", "vgg16"), ["epochs", "first loss", "last loss"]].tolist() == [3, 2.0, 1.2]
