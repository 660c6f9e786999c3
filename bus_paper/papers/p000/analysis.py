"""What the results chapters compute from trained models: embeddings, kNN probes, comparisons.

Two questions are asked of a pretrained encoder before any label is used: does its embedding carry
label information (:func:`knn_label_agreement`, compared with the same encoder at its random
initialisation), and what does it find similar (:func:`nearest`, :func:`embedding_2d`)? For the
fine-tuned models, :func:`comparison_table` sets the measured metrics, with two-level bootstrap
confidence intervals (seeds, then clusters of test images), beside the numbers paper 000 reports (:func:`paper_000_numbers`).

torch, the models and t-SNE are imported inside the functions that need them, so the numeric
helpers load fast; the plot helpers draw on a matplotlib ``Axes`` the caller owns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...core.stats import two_level_metrics
from ...metrics import METRICS, binary_metrics, interval_side
from ..literature import METRICS as REPORTED
from ..literature import paper_000


def _paper_000_proposed() -> dict[str, dict[str, float]]:
    rows = paper_000("table1").query("model == 'proposed'")
    return {r["dataset"]: {m: float(r[m]) for m in REPORTED} for _, r in rows.iterrows()}


# Paper 000 (Wang et al. 2025), Table 1, row "Proposed Model", in %, from the one copy of the
# paper's numbers (bus_paper/papers/literature/paper_000.toml). The paper calls BUSI "Baheya" (the
# hospital it comes from). It reports no specificity, no confidence interval and no seeds.
PAPER_000 = _paper_000_proposed()


def paper_000_numbers() -> pd.DataFrame:
    """The proposed model's test metrics as reported by paper 000 (Table 1), in %, one row per
    dataset; metrics the paper does not report (specificity) are NaN."""
    rows = [{"dataset": d, **{m: v.get(m, np.nan) for m in METRICS}} for d, v in PAPER_000.items()]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- encoders
def encoder_from_pretrained(state: Mapping[str, Any]):
    """The :class:`~bus_paper.models.BusNet` of a :func:`~bus_paper.train.load_pretrained` state,
    with the pretrained encoder (and projection head) loaded, in eval mode on the CPU."""
    from ...models import build_network
    missing = [k for k in ("encoder", "model_config") if k not in state]
    if missing:
        raise KeyError(f"not a pretrained-encoder state: no {missing} (use load_pretrained)")
    model = build_network(state["model_config"])
    model.load_encoder_state_dict(state["encoder"])
    return model.eval()


def random_encoder(model_config: Mapping[str, Any], seed: int = 0):
    """The same architecture at random initialisation, seeded as pretraining seeds its start
    (``torch.manual_seed(0)`` then ``build_model``): the encoder *before* pretraining."""
    import torch

    from ...models import build_network
    torch.manual_seed(seed)
    return build_network(model_config).eval()


def embedding_sample(profile, root, n_per_dataset: int, seed: int = 0):
    """Up to ``n_per_dataset`` images of each pool and evaluation dataset, preprocessed as for
    training: (rows, uint8 tensor ``[N, 1, S, S]``).

    ``rows`` are manifest rows plus ``in_pool`` (the image was in the pretraining pool: evaluation
    images never are, nor pool images that duplicate one) and ``group`` (patient, lesion and
    duplicate group, computed over the whole dataset, so a kNN probe can leave whole groups out).
    """
    from ...data.duplicates import load_duplicates
    from ...data.preprocess import load_images
    from ...data.splits import split_groups
    from ...train.data import load_pool, manifest_for, to_tensor
    if n_per_dataset < 1:
        raise ValueError(f"n_per_dataset must be >= 1, got {n_per_dataset}")
    datasets = tuple(profile.pretrain.pool) + tuple(profile.finetune.datasets)
    frame = manifest_for(profile, root, datasets)
    frame["group"] = split_groups(frame, load_duplicates(frame, root, profile.data))
    _, pool = load_pool(profile, root)
    frame["in_pool"] = frame["path"].isin(set(pool["path"]))
    rows = pd.concat([g.sample(min(n_per_dataset, len(g)), random_state=seed)
                      for _, g in frame.groupby("dataset", sort=False)], ignore_index=True)
    images = load_images(rows, root, profile.data.image_size).images
    return rows, to_tensor(images)


def embed(model, x_u8, normalizer, run, batch_size: int = 64) -> np.ndarray:
    """Encoder features (``model.encode``: the pooled map both heads see) of uint8 images
    ``[N, 1, S, S]``, float32 ``[N, feature_dim]``; eval mode, batched, under the run's autocast."""
    import torch

    from ...train.engine import infer
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x_u8 = torch.as_tensor(x_u8)
    if x_u8.ndim != 4 or x_u8.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images [N, 1, S, S], got {x_u8.dtype} {list(x_u8.shape)}")
    feats = infer(model, x_u8, normalizer, run, lambda m, x: m.encode(x), batch_size)
    return feats.reshape(-1, model.feature_dim).numpy()


# ----------------------------------------------------------------------------- embeddings
def _unit(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {emb.shape}")
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def nearest(emb_q: np.ndarray, emb_db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` cosine-nearest database rows of each query: (indices ``[Q, k]``, similarities
    ``[Q, k]``), most similar first."""
    q, db = _unit(emb_q), _unit(emb_db)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions, the database {db.shape[1]}")
    if not 1 <= k <= len(db):
        raise ValueError(f"k must be in 1..{len(db)} (the database size), got {k}")
    sim = q @ db.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def knn_scores(emb: np.ndarray, labels: Sequence[Any], groups: Sequence[Any], k: int = 5,
               positive: Any = "malignant") -> tuple[np.ndarray, np.ndarray, int]:
    """Leave-one-group-out kNN scores: for each image, the share of ``positive`` labels among its
    ``k`` cosine-nearest images *of other groups* (an image's duplicates and same-patient images are
    left out, otherwise the probe would measure recognition of the same scan or patient, not of
    the label). Returns the 0/1 labels, the scores and the ``k`` used (fewer when a group leaves
    fewer neighbours)."""
    y = np.asarray([lab == positive for lab in labels], dtype=int)
    g = np.asarray(pd.Series(list(groups)).astype(str))
    u = _unit(emb)
    if not len(u) == len(y) == len(g):
        raise ValueError(f"emb, labels and groups differ in length: {len(u)}, {len(y)}, {len(g)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    same = g[:, None] == g[None, :]
    others = (~same).sum(axis=1)
    if len(u) == 0 or others.min() == 0:
        raise ValueError("every image needs neighbours outside its own group (need >= 2 groups)")
    k_eff = int(min(k, others.min()))
    sim = np.where(same, -np.inf, u @ u.T)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k_eff]
    return y, y[idx].mean(axis=1), k_eff


def knn_label_agreement(emb: np.ndarray, labels: Sequence[Any], groups: Sequence[Any],
                        k: int = 5, positive: Any = "malignant") -> dict[str, float]:
    """How much label information an embedding carries: leave-one-group-out kNN classification
    (:func:`knn_scores`). Returns the accuracy of the majority vote (score > 0.5), the balanced
    accuracy, the AUC of the score, the accuracy of always guessing the majority class (the floor
    accuracy must beat), ``n`` and ``k``. Random embeddings give AUC ~0.5; an embedding that
    separates the classes gives ~1.
    """
    return _agreement(*knn_scores(emb, labels, groups, k, positive))


def _agreement(y: np.ndarray, score: np.ndarray, k_eff: int) -> dict[str, float]:
    """:func:`knn_label_agreement`'s numbers from :func:`knn_scores`' labels and scores."""
    pred = (score > 0.5).astype(int)
    m = binary_metrics(y, score, threshold=0.5 + 1e-9)  # vote: strictly more than half
    balanced = np.nanmean([m["recall"], m["specificity"]])
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced),
            "auc": m["auc"], "majority_baseline": float(max(y.mean(), 1 - y.mean())),
            "n": len(y), "k": k_eff}


def knn_probe_table(embeddings: Mapping[str, np.ndarray], rows: pd.DataFrame,
                    datasets: Sequence[str], *, k: int = 5, n_boot: int = 2000,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The kNN probe (:func:`knn_label_agreement`) of each embedding on the benign and malignant
    images of each data set, and the paired difference between the first two embeddings.

    ``embeddings``: name -> [N, D] features of the images of ``rows`` (columns ``dataset``,
    ``label``, ``group``). Intervals resample the groups (patients, duplicate groups) with
    replacement, one draw for both embeddings (:func:`~bus_paper.core.stats.two_level_bootstrap`);
    each image keeps the score its neighbours gave it, so the interval counts which images were
    sampled, not a re-drawn neighbourhood. Returns ``(probe, difference)``: one row per data set and
    embedding (AUC and interval in %), and one row per data set with the difference first minus
    second in percentage points.
    """
    from ...core.stats import two_level_bootstrap
    names = list(embeddings)
    probe, diff = [], []
    for dataset in datasets:
        m = ((rows["dataset"] == dataset) & rows["label"].isin(["benign", "malignant"])).to_numpy()
        if not m.any():
            continue
        labels, groups = rows.loc[m, "label"], rows.loc[m, "group"].astype(str).to_numpy()
        scores = {}
        for name in names:
            y, scores[name], k_eff = knn_scores(embeddings[name][m], labels, groups, k)
            r = _agreement(y, scores[name], k_eff)
            ci = two_level_bootstrap(y, scores[name], clusters=groups, n_boot=n_boot, seed=seed)
            probe.append({"dataset": dataset, "encoder": name, "groups": ci.n_clusters, **r,
                          "auc_pct": 100 * r["auc"], "ci_low": ci.lo, "ci_high": ci.hi})
        if len(names) >= 2:
            d = two_level_bootstrap(y, scores[names[0]], scores[names[1]], clusters=groups,
                                    n_boot=n_boot, seed=seed)
            diff.append({"dataset": dataset, "comparison": f"{names[0]} - {names[1]}",
                         "difference": d.estimate, "ci_low": d.lo, "ci_high": d.hi,
                         "n": d.n_images, "groups": d.n_clusters})
    return pd.DataFrame(probe), pd.DataFrame(diff)


def knn_probe_readable(probe: pd.DataFrame) -> pd.DataFrame:
    """:func:`knn_probe_table`'s probe rows for reading: percent with one decimal, the interval in
    words."""
    def pct(column: str) -> pd.Series:
        return (100 * probe[column]).map("{:.1f}".format)

    return pd.DataFrame({
        "data set": probe["dataset"], "encoder": probe["encoder"],
        "images": probe["n"].astype(int), "groups": probe["groups"].astype(int),
        "kNN AUC % (95 % CI)": [f"{r.auc_pct:.1f} ({r.ci_low:.1f} to {r.ci_high:.1f})"
                                for r in probe.itertuples()],
        "accuracy %": pct("accuracy"), "balanced accuracy %": pct("balanced_accuracy"),
        "majority-class accuracy %": pct("majority_baseline")}).reset_index(drop=True)


def describe_knn_probe(probe: pd.DataFrame, difference: pd.DataFrame) -> str:
    """Markdown, one bullet per data set: both AUCs with intervals and the paired difference,
    and what its interval allows one to say (it includes 0, or lies on one side of it)."""
    lines = []
    for _, d in difference.iterrows():
        a, b = d["comparison"].split(" - ")
        side = probe[probe["dataset"] == d["dataset"]].set_index("encoder")
        auc = {name: f"{r['auc_pct']:.1f} % ({r['ci_low']:.1f} to {r['ci_high']:.1f})"
               for name, r in side.iterrows()}

        side = interval_side(d["ci_low"], d["ci_high"])
        if side:
            more = "more" if side > 0 else "less"
            reading = f"the {a} embedding carries {more} label information than the {b} one"
        else:
            reading = ("the interval includes 0: at this sample the probe cannot tell the two "
                       "embeddings apart")
        lines.append(
            f"- **{d['dataset']}** ({int(d['n'])} images in {int(d['groups'])} groups): kNN AUC "
            f"{auc[a]} for the {a} encoder against {auc[b]} for the {b} one; difference "
            f"{d['difference']:+.1f} points (95 % CI {d['ci_low']:+.1f} to {d['ci_high']:+.1f}, "
            f"groups resampled): {reading}.")
    return "\n".join(lines)


def embedding_2d(emb: np.ndarray, seed: int = 0, min_tsne: int = 50) -> np.ndarray:
    """2-D map ``[N, 2]`` of an embedding: PCA to (at most) 50 dimensions, then t-SNE; PCA alone
    when there are fewer than ``min_tsne`` points (t-SNE needs a neighbourhood to preserve)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    x = _unit(emb)     # cosine geometry, as the contrastive loss sees it
    n = len(x)
    if n < 3 or x.shape[1] < 2:
        raise ValueError(f"need at least 3 points of >= 2 dimensions for a 2-D map, got {x.shape}")
    x = PCA(n_components=min(50, n, x.shape[1]), random_state=seed).fit_transform(x)
    if n < min_tsne:
        return x[:, :2]
    perplexity = float(min(30, (n - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed
                ).fit_transform(x)


# ----------------------------------------------------------------------------- fine-tuning results
def _test_parts(results: Sequence[Mapping[str, Any]]) -> list[pd.DataFrame]:
    """Each run's test predictions, sorted by image path."""
    return [r["predictions"][r["predictions"]["split"] == "test"].sort_values("path")
            for r in results]


def aligned_test_predictions(results: Sequence[Mapping[str, Any]]
                             ) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """(labels, per-run test probabilities, per-run thresholds) of fine-tuning runs that were
    tested on the same images (seeds of one dataset), aligned by image path; else a ValueError."""
    tests = _test_parts(results)
    if not tests:
        raise ValueError("no runs")
    if any(list(t["path"]) != list(tests[0]["path"]) for t in tests):
        raise ValueError("the runs were tested on different images")
    return (tests[0]["label"].to_numpy(), [t["prob"].to_numpy() for t in tests],
            [float(r["threshold"]) for r in results])


def test_clusters(results: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """The cluster id (patient, lesion or duplicate group: the split's group) of each test image
    of runs tested on the same images, in :func:`aligned_test_predictions`' order; None for runs
    whose predictions do not record it (cached before clusters were written: every image is then
    its own cluster)."""
    tests = _test_parts(results)
    if not tests or any("cluster" not in t for t in tests):
        return None
    ids = tests[0]["cluster"].astype(str).to_numpy()
    if any(not np.array_equal(t["cluster"].astype(str).to_numpy(), ids) for t in tests[1:]):
        raise ValueError("the runs disagree on the test images' clusters")
    return ids


def cluster_count(clusters, n_images: int) -> int:
    """How many clusters the test images form (each image its own when ``clusters`` is None)."""
    return len(set(clusters)) if clusters is not None else n_images


def seed_mean_ci(y_true, probs: Sequence[np.ndarray], thresholds: Sequence[float],
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, clusters=None
                 ) -> dict[str, tuple[float, float, float]]:
    """Mean over fine-tuning seeds of each metric, with a two-level bootstrap CI: every replicate
    draws seeds with replacement, then clusters of test images (``clusters``, e.g. from
    :func:`test_clusters`; None: images), so the interval counts both the seeds' spread and the
    test set's sampling error (:func:`~bus_paper.core.stats.two_level_metrics`). All seeds predict
    the same test images (the split does not depend on the fine-tuning seed).
    Returns ``{metric: (mean, lo, hi)}`` (fractions).
    """
    y = np.asarray(y_true).astype(int)
    ps = [np.asarray(p, dtype=float) for p in probs]
    if not ps or len(ps) != len(thresholds):
        raise ValueError(f"need one threshold per seed: {len(ps)} prediction sets, "
                         f"{len(thresholds)} thresholds")
    if any(p.shape != y.shape for p in ps):
        raise ValueError("every prediction set must have one probability per test image")
    ci = two_level_metrics(y, np.stack(ps), list(thresholds), clusters, metrics=METRICS,
                           n_boot=n_boot, seed=seed, alpha=alpha)
    return {m: (ci[m].estimate, ci[m].lo, ci[m].hi) for m in METRICS}


def comparison_table(results: Sequence[Mapping[str, Any]], n_boot: int = 1000,
                     paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per dataset and metric: measured here (mean over seeds, sd, 95% CI) beside the value
    reported by paper 000, all in %, and whether the reported value lies inside our interval.

    ``results`` are :func:`~bus_paper.train.finetune` results (with ``predictions``); several
    seeds of a dataset are pooled as in :func:`seed_mean_ci`.
    """
    paper = paper_000_numbers() if paper is None else paper
    reported = paper.set_index("dataset")
    by_dataset: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_dataset.setdefault(r["dataset"], []).append(r)
    rows = []
    for dataset, runs in by_dataset.items():
        try:
            y, probs, thresholds = aligned_test_predictions(runs)
        except ValueError as err:
            raise ValueError(f"{dataset}: {err}") from None
        clusters = test_clusters(runs)
        ci = seed_mean_ci(y, probs, thresholds, n_boot=n_boot, clusters=clusters)
        n_clusters = cluster_count(clusters, len(y))
        for m in METRICS:
            values = [r["metrics"][m] for r in runs]
            sd = float(np.std(values, ddof=1)) * 100 if len(values) > 1 else float("nan")
            ref = float(reported.loc[dataset, m]) if dataset in reported.index else float("nan")
            mean, lo, hi = (100 * v for v in ci[m])
            rows.append({"dataset": dataset, "metric": m, "seeds": len(runs), "test images": len(y),
                         "clusters": n_clusters, "measured": mean,
                         "sd_over_seeds": sd, "ci_low": lo, "ci_high": hi, "paper": ref,
                         "paper_in_ci": bool(lo <= ref <= hi)
                         if np.isfinite([ref, lo, hi]).all() else pd.NA})
    table = pd.DataFrame(rows)
    return table.astype({"paper_in_ci": "boolean"}) if len(table) else table


def verdict(table: pd.DataFrame, dataset: str) -> str:
    """A plain sentence: which of the paper's numbers for ``dataset`` fall inside our 95% CIs."""
    rows = table[(table["dataset"] == dataset) & table["paper"].notna()]
    if rows.empty:
        return f"{dataset}: the paper reports no numbers to compare with."
    inside = rows.loc[rows["paper_in_ci"].fillna(False).astype(bool), "metric"].tolist()
    above = rows.loc[rows["paper"] > rows["ci_high"], "metric"].tolist()
    below = rows.loc[rows["paper"] < rows["ci_low"], "metric"].tolist()
    parts = []
    if inside:
        parts.append(f"inside our 95% CI for {', '.join(inside)}")
    if above:
        parts.append(f"above it for {', '.join(above)}")
    if below:
        parts.append(f"below it for {', '.join(below)}")
    if not parts:
        return f"{dataset}: our intervals are undefined (too few test images of one class)."
    return f"{dataset}: the paper's value is " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------- plots
def plot_roc(ax, y_true, prob, label: str = "", **kwargs) -> float:
    """Draw the ROC curve of ``prob`` on ``ax`` (with the chance diagonal); returns the AUC, NaN
    (and nothing drawn but the diagonal) when only one class is present."""
    from sklearn.metrics import roc_auc_score, roc_curve
    y = np.asarray(y_true).astype(int)
    ax.plot([0, 1], [0, 1], ls=":", lw=0.8, color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           aspect="equal")
    if not 0 < y.sum() < y.size:
        return float("nan")
    auc = float(roc_auc_score(y, prob))
    fpr, tpr, _ = roc_curve(y, prob)
    ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})".strip(), **kwargs)
    return auc


def plot_confusion(ax, y_true, prob, threshold: float,
                   classes: Sequence[str] = ("benign", "malignant")) -> np.ndarray:
    """Draw the 2x2 confusion matrix (rows: truth, columns: prediction) at ``threshold``; returns
    the counts."""
    y = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    cm = np.array([[np.sum((y == t) & (pred == p)) for p in (0, 1)] for t in (0, 1)])
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
    for (t, p), v in np.ndenumerate(cm):
        ax.text(p, t, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true")
    return cm
