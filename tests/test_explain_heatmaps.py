"""Heatmap helpers of bus_paper.explain: batched Grad-CAM, localisation scores, summaries, figure."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bus_paper import explain
from bus_paper.data.imageio import read_image, read_mask
from bus_paper.data.manifest import build_manifest
from bus_paper.data.preprocess import Normalizer, square_resize

S = 32


class Blob(nn.Module):
    """Class 1's logit = mean of a 1x1-conv map pooled to stride 4: its Grad-CAM is the
    (pooled) input itself, so it peaks where the image is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(0.0)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x):
        m = self.pool(self.conv(x)).mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1)

    def gradcam_target_layers(self):
        return [self.pool]


def blob_images(n: int = 4):
    """Dark images with a bright square at a different place each, and that square as the mask."""
    images = np.full((n, S, S), 20, dtype=np.uint8)
    masks = np.zeros((n, S, S), dtype=bool)
    for i in range(n):
        r, c = 4 + 4 * i % 20, 20 - 4 * i % 16
        images[i, r:r + 8, c:c + 8] = 230
        masks[i, r:r + 8, c:c + 8] = True
    return images, masks


def test_heatmaps_find_the_bright_lesion_and_report_the_grid():
    images, masks = blob_images()
    hm = explain.heatmaps(Blob(), images, Normalizer(0.2, 0.3), targets=1, batch_size=3)
    assert hm.cams.shape == (4, S, S) and hm.cams.dtype == np.float32
    assert hm.map_size == (S // 4, S // 4) and hm.stride == 4
    assert (hm.cams >= 0).all() and (hm.cams <= 1 + 1e-6).all()
    assert hm.prob.shape == (4,) and ((hm.prob > 0) & (hm.prob < 1)).all()
    scores = explain.localisation_scores(hm.cams, masks)
    assert (scores["hit"] == 1).all()
    assert (scores["energy"] > scores["mask_share"]).all()   # far above a uniform map
    assert not scores["empty_cam"].any()


def test_heatmaps_explain_the_class_asked_for():
    images, masks = blob_images(2)
    # class 0's logit falls with brightness: its ReLU'd map is empty on the bright lesion
    hm = explain.heatmaps(Blob(), images, Normalizer(0.2, 0.3), targets=[1, 0])
    assert list(hm.targets) == [1, 0]
    scores = explain.localisation_scores(hm.cams, masks)
    assert scores.loc[0, "hit"] == 1 and scores.loc[1, "energy"] < scores.loc[0, "energy"]
    with pytest.raises(ValueError, match="target classes"):
        explain.heatmaps(Blob(), images, Normalizer(0.2, 0.3), targets=[1, 0, 1])
    with pytest.raises(ValueError, match="uint8"):
        explain.heatmaps(Blob(), images.astype(np.float32), Normalizer(0.2, 0.3))


def test_grid_size_of_the_real_models():
    """The proposed model's CAM is at stride 8 (its fused map), ResNet-50's at stride 32."""
    from bus_paper.config import ModelConfig
    from bus_paper.models import build_model
    from bus_paper.models.baselines import build_baseline
    torch.manual_seed(0)
    x = np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    busnet = build_model(ModelConfig(variant="coatnet_nano", scales=(64, 32))).eval()
    resnet = build_baseline("resnet50", 64, proj_dim=32, proj_hidden=64).eval()
    for net, stride in ((busnet, 8), (resnet, 32)):
        hm = explain.heatmaps(net, x, Normalizer(0.3, 0.2))
        assert hm.map_size == (64 // stride, 64 // stride) and hm.stride == stride
        assert hm.cams.shape == (2, 64, 64)
        with torch.no_grad():
            ref = torch.softmax(net(Normalizer(0.3, 0.2)(torch.from_numpy(x)[:, None])), 1)[:, 1]
        assert np.allclose(hm.prob, ref.numpy(), atol=1e-5)   # same forward pass as predictions


def test_pointing_hit_counts_ties_and_empty_maps():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True
    cam = np.zeros((4, 4))
    cam[0, 0] = cam[3, 3] = 1.0            # two maxima, one inside
    assert explain.pointing_hit(cam, mask) == 0.5
    cam[0, 1] = 1.0                        # three maxima, two inside
    assert explain.pointing_hit(cam, mask) == pytest.approx(2 / 3)
    assert explain.pointing_hit(np.zeros((4, 4)), mask) == 0.0
    single = np.zeros((4, 4))
    single[2, 2] = 0.7
    assert explain.pointing_hit(single, mask) == 0.0
    assert explain.pointing_hit(single, ~mask) == 1.0


def test_localisation_scores_edge_cases():
    cams = np.zeros((3, 4, 4), dtype=np.float32)
    masks = np.zeros((3, 4, 4), dtype=bool)
    cams[0, :2, :2] = 1.0                  # all of it inside the mask
    masks[0, :2, :] = True
    masks[1, 0, 0] = True                  # an empty map: points nowhere
    cams[2] = 1.0                          # no mask: not scored
    s = explain.localisation_scores(cams, masks)
    assert s.loc[0, "energy"] == 1.0 and s.loc[0, "hit"] == 1.0 and s.loc[0, "mask_share"] == 0.5
    assert s.loc[1, "energy"] == 0.0 and s.loc[1, "hit"] == 0.0 and bool(s.loc[1, "empty_cam"])
    assert np.isnan(s.loc[2, "energy"]) and np.isnan(s.loc[2, "hit"]) and not s.loc[2, "has_mask"]
    # a uniform map scores the mask's share on energy
    u = explain.localisation_scores(np.ones((1, 4, 4)), masks[:1])
    assert u.loc[0, "energy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        explain.localisation_scores(cams, masks[:, :2])


def test_cam_targets():
    labels, prob = [0, 1, 0, 1], [0.9, 0.2, 0.1, 0.8]
    assert list(explain.cam_targets("label", labels)) == labels
    assert list(explain.cam_targets("malignant", labels)) == [1, 1, 1, 1]
    assert list(explain.cam_targets("predicted", labels, prob, 0.5)) == [1, 0, 0, 1]
    with pytest.raises(ValueError, match="threshold"):
        explain.cam_targets("predicted", labels)
    with pytest.raises(ValueError, match="unknown"):
        explain.cam_targets("best", labels)


def test_pick_examples_by_rule_skipping_maskless_images():
    labels = [1, 0, 0, 1, 0, 1, 0]
    masks = np.ones((7, 2, 2), dtype=bool)
    masks[1] = False                       # the first benign image has no mask
    assert explain.pick_examples(labels, masks, 2) == [2, 4, 0, 3]
    assert explain.pick_examples(labels, masks, 5) == [2, 4, 6, 0, 3, 5]


def _scores(rng, n=40):
    rows = []
    for model, shift in (("proposed", 0.2), ("base", 0.0)):
        for seed in (0, 1):
            for i in range(n):
                e = float(np.clip(0.3 + shift + 0.05 * rng.standard_normal(), 0, 1))
                rows.append({"dataset": "busi", "model": model, "seed": seed, "path": f"img{i:03d}",
                             "label": i % 2, "energy": e, "hit": float(e > 0.4),
                             "mask_share": 0.1, "empty_cam": False})
    rows.append({"dataset": "busi", "model": "proposed", "seed": 0, "path": "nomask", "label": 0,
                 "energy": np.nan, "hit": np.nan, "mask_share": 0.0, "empty_cam": False})
    return pd.DataFrame(rows)


def test_localisation_summary_means_and_cis():
    scores = _scores(np.random.default_rng(0))
    summary = explain.localisation_summary(scores, n_boot=500)
    assert list(summary["model"]) == ["proposed", "base"]
    row = summary.set_index("model").loc["proposed"]
    per_image = scores[scores.model == "proposed"].dropna().groupby("path")["energy"].mean()
    assert row["images"] == 40 and row["seeds"] == 2     # the mask-less image is not scored
    assert row["energy"] == pytest.approx(100 * per_image.mean())
    assert row["energy_lo"] < row["energy"] < row["energy_hi"]
    assert row["chance"] == pytest.approx(10.0)
    by_label = explain.localisation_summary(scores, by=("dataset", "model", "label"), n_boot=100)
    assert len(by_label) == 4 and set(by_label["images"]) == {20}


def test_paired_localisation_finds_a_real_difference_and_not_a_null_one():
    scores = _scores(np.random.default_rng(1))
    paired = explain.paired_localisation(scores, "proposed", "base", n_boot=500)
    e = paired.set_index("score").loc["energy"]
    assert e["diff"] == pytest.approx(e["proposed"] - e["base"])
    assert e["diff"] == pytest.approx(20, abs=3) and e["lo"] > 0 and e["p"] < 0.01
    assert e["images"] == 40
    same = pd.concat([scores[scores.model == "base"],
                      scores[scores.model == "base"].assign(model="copy")])
    null = explain.paired_localisation(same, "copy", "base", n_boot=200).set_index("score")
    assert null.loc["energy", "diff"] == 0 and null.loc["energy", "p"] == 1.0


def test_localisation_intervals_count_clusters_and_seeds():
    """Four images of one lesion are one piece of evidence: with their cluster the interval widens
    (as if 40 images, not 160); two seeds that disagree widen it too."""
    rng = np.random.default_rng(3)
    base = _scores(rng)
    base = base[(base.model == "base") & (base.seed == 0) & base.energy.notna()]
    copies = pd.concat([base.assign(path=base.path + f"_{k}", cluster=base.path) for k in range(4)])
    naive = explain.localisation_summary(copies.drop(columns="cluster"), n_boot=1000).iloc[0]
    grouped = explain.localisation_summary(copies, n_boot=1000).iloc[0]
    assert (naive["images"], naive["clusters"], grouped["clusters"]) == (160, 160, 40)
    assert grouped["energy"] == pytest.approx(naive["energy"])
    assert grouped["energy_hi"] - grouped["energy_lo"] > 1.5 * (naive["energy_hi"] - naive["energy_lo"])
    other = base.assign(seed=1, energy=np.clip(base.energy + 0.3, 0, 1))
    one = explain.localisation_summary(base, n_boot=1000).iloc[0]
    two = explain.localisation_summary(pd.concat([base, other]), n_boot=1000).iloc[0]
    assert two["seeds"] == 2 and two["energy"] == pytest.approx(one["energy"] + 15)
    assert two["energy_hi"] - two["energy_lo"] > 3 * (one["energy_hi"] - one["energy_lo"])
    with pytest.raises(ValueError, match="disagree"):
        explain.localisation_summary(pd.concat([copies, copies.assign(seed=1, cluster="x")]))


def test_load_test_with_masks_matches_the_training_preprocessing(phantom_root):
    frame = build_manifest(phantom_root, ["busi"]).frame
    frame = frame[frame["label"].isin(["benign", "malignant"])]
    several = frame[frame["mask_paths"].str.contains(";")]
    assert len(several), "the phantom has a BUSI image with two masks"
    test_paths = sorted({several["path"].iloc[0], *frame["path"].iloc[:5]})
    pred = pd.DataFrame({"path": test_paths[::-1] + ["val.png"],
                         "split": ["test"] * len(test_paths) + ["val"],
                         "label": 0, "prob": 0.5})
    test, images, masks = explain.load_test_with_masks(
        {"dataset": "busi", "predictions": pred}, phantom_root, 48)
    assert list(test["path"]) == test_paths and images.shape == masks.shape == (len(test_paths), 48, 48)
    rows = frame.set_index("path")
    for i, p in enumerate(test_paths):
        img = read_image(phantom_root / p)
        parts = [phantom_root / m for m in rows.loc[p, "mask_paths"].split(";")]
        assert np.array_equal(images[i], square_resize(img, 48))
        assert np.array_equal(masks[i], square_resize(read_mask(parts, img.shape), 48, mask=True))
    two = test_paths.index(several["path"].iloc[0])
    first = square_resize(read_mask([phantom_root / several["mask_paths"].iloc[0].split(";")[0]]),
                          48, mask=True)
    assert masks[two].sum() > first.sum()                  # the union of both lesions


def test_plot_heatmap_grid():
    images, masks = blob_images(3)
    cams = {"A": np.random.default_rng(0).random((3, S, S)), "B": np.zeros((3, S, S))}
    fig = explain.plot_heatmap_grid(images, masks, cams, ["r0", "r1", "r2"],
                                    cell_titles={"A": ["a0", "a1", "a2"]})
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_title() for ax in axes[:, 0]] == ["r0", "r1", "r2"]
    assert axes[1, 1].get_title() == "a1" and axes[1, 2].get_title() == "B"
    with pytest.raises(ValueError, match="one entry per row"):
        explain.plot_heatmap_grid(images, masks, cams, ["r0"])
    import matplotlib.pyplot as plt
    plt.close("all")
