"""Generalisation across sites, and calibration: the chapter the papers do not have.

The papers test each dataset on its own and still speak of robustness "across different
populations". Here a model fine-tuned on one site is tested on every other one:

- :func:`site_runs` fine-tunes a Table 1 row (the proposed model, or a baseline) on each labelled
  BUS dataset from its cached SSL encoder: the same :func:`~bus_paper.train.finetune` runs the
  other chapters use, so BUSI and UDIAT come from the cache.
- :func:`transfer` applies a finished run's deployable model (its weights, *its own* normaliser
  and validation threshold, as ``bus-paper predict`` would) to another dataset's test split.
- :func:`pooled_finetune` trains on the union of several datasets (leave one site out) and is
  tested on the held-out one.
- :func:`expected_calibration_error`, :func:`reliability`, :func:`fit_temperature`: calibration
  before and after temperature scaling fitted on the *training* site's validation split.

Every test split is the leak-free 70/10/20 split of its dataset (the same images as the diagonal
of the matrix), so a row of the matrix compares one model on several sites' test images.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.2, 0.8, 0.9])
>>> round(expected_calibration_error(y, p, bins=2), 3)
0.15
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...config import Profile
from ...core.calibration import expected_calibration_error, fit_temperature, scale  # noqa: F401 (re-exported)
from ...metrics import METRICS, binary_metrics
from ...train.engine import releases_run_locks
from ..p000.analysis import aligned_test_predictions, cluster_count, seed_mean_ci, test_clusters


# ----------------------------------------------------------------------------- single-site runs
def site_runs(profile: Profile, root: str | Path | None, row: str, datasets: Sequence[str],
              seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Fine-tune Table 1 row ``row`` ("proposed", "simclr_resnet50", ...) on every dataset and
    seed (cached runs); each result gets ``train`` (its dataset) and ``row``."""
    from ..p000.experiments import table1_runs
    return [r | {"train": r["dataset"]}
            for r in table1_runs(profile, root, row, datasets, seeds)]


def labelled(profile: Profile, root: str | Path | None, dataset: str):
    """A dataset's leak-free split as tensors (:func:`~bus_paper.train.data.load_labelled`)."""
    from ...train.data import load_labelled, resolve_root
    return load_labelled(profile, resolve_root(profile, root), dataset)


def transfer(run: Mapping[str, Any], data, profile: Profile,
             parts: Sequence[str] = ("val", "test")) -> dict[str, Any]:
    """``run``'s model tested on ``data`` (a :class:`~bus_paper.train.data.LabelledSplits`):
    a result like :func:`~bus_paper.train.finetune`'s (``predictions``, ``threshold``,
    ``metrics`` on the test part), with ``train`` the run's dataset and ``dataset`` the tested one.
    ``profile`` gives the inference settings of this machine (device, precision).

    On its own dataset the run's stored predictions are returned unchanged, so the diagonal of
    the matrix is exactly what the other chapters report.
    """
    from ...data.preprocess import Normalizer
    from ...train.finetuning import load_deployable, predict_proba
    train = run.get("train", run["dataset"])
    base = {"train": train, "dataset": data.dataset, "seed": run["seed"],
            "row": run.get("row"), "threshold": float(run["threshold"])}
    if train == data.dataset:
        preds = run["predictions"]
    else:
        model, state = load_deployable(run["checkpoint"])
        if int(state["image_size"]) != int(data.x["test"].shape[-1]):
            raise ValueError(f"{run['checkpoint']} expects {state['image_size']} px images, "
                             f"got {data.x['test'].shape[-1]} px")
        norm = Normalizer.from_dict(state["normalizer"])
        preds = pd.concat([pd.DataFrame({"path": data.paths[s], "split": s,
                                         "label": data.y[s].numpy(),
                                         "prob": predict_proba(model, data.x[s], norm,
                                                               profile.run),
                                         "cluster": data.clusters(s)})
                           for s in parts], ignore_index=True)
    test = preds[preds["split"] == "test"]
    return base | {"predictions": preds,
                   "metrics": binary_metrics(test["label"].to_numpy(), test["prob"].to_numpy(),
                                             base["threshold"])}


def cross_site_table(transfers: Sequence[Mapping[str, Any]], n_boot: int = 1000
                     ) -> pd.DataFrame:
    """One row per (row, train, test): every metric as the seed mean with a bootstrap 95% CI over
    seeds, then clusters of test images (:func:`~bus_paper.papers.p000.analysis.seed_mean_ci`), in %."""
    groups: dict[tuple[Any, str, str], list[Mapping[str, Any]]] = {}
    for t in transfers:
        groups.setdefault((t.get("row"), t["train"], t["dataset"]), []).append(t)
    rows = []
    for (row, train, test), runs in groups.items():
        y, probs, thr = aligned_test_predictions(runs)
        clusters = test_clusters(runs)
        ci = seed_mean_ci(y, probs, thr, n_boot=n_boot, clusters=clusters)
        out = {"row": row, "train": train, "test": test, "seeds": len(runs),
               "test images": len(y),
               "clusters": cluster_count(clusters, len(y)),
               "within": train == test}
        for m in METRICS:
            out[m], out[f"{m}_lo"], out[f"{m}_hi"] = (100 * v for v in ci[m])
        rows.append(out)
    return pd.DataFrame(rows)


def matrix(table: pd.DataFrame, metric: str = "auc", order: Sequence[str] | None = None
           ) -> pd.DataFrame:
    """The train x test matrix of ``metric`` from a :func:`cross_site_table` (one row)."""
    m = table.pivot(index="train", columns="test", values=metric)
    if order is not None:
        m = m.reindex(index=[d for d in order if d in m.index],
                      columns=[d for d in order if d in m.columns])
    return m


# ----------------------------------------------------------------------------- pooled training
def pooled_labelled(profile: Profile, root: str | Path | None, datasets: Sequence[str]):
    """The union of several datasets' leak-free splits (train with train, val with val, test
    with test; each dataset split on its own, so no image leaks), one normaliser fitted on the
    pooled training images."""
    from ...data.preprocess import Normalizer
    from ...train.data import LabelledSplits
    parts = [labelled(profile, root, d) for d in datasets]
    x = {s: torch.cat([p.x[s] for p in parts]) for s in ("train", "val", "test")}
    y = {s: torch.cat([p.y[s] for p in parts]) for s in ("train", "val", "test")}
    paths = {s: [f"{p.dataset}:{q}" for p in parts for q in p.paths[s]]
             for s in ("train", "val", "test")}
    splits = pd.concat([p.splits.assign(dataset=p.dataset) for p in parts], ignore_index=True)
    return LabelledSplits("+".join(datasets), x, y, paths, Normalizer.fit(x["train"].numpy()),
                          splits)


def site_cap(profile: Profile) -> int | None:
    """Images drawn per site and epoch in a pooled fine-tuning (``[papers.beyond] site_cap``;
    ``None``: every training image once per epoch, so the largest site dominates)."""
    cap = profile.section("beyond").get("site_cap")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise ValueError(f"[papers.beyond] site_cap must be a positive integer, got {cap!r}")
    return cap


def site_capped_batches(sites: Sequence[str], cap: int, batch_size: int, seed: int,
                        drop_last: bool = True) -> list[torch.Tensor]:
    """One epoch's batches of training indices: at most ``cap`` images of each site, drawn
    without replacement (all of a smaller site), then shuffled together. Each site weighs about
    the same and an epoch costs ``sites x cap`` images, not the largest site's thousands.

    >>> b = site_capped_batches(["a"] * 6 + ["b"] * 2, cap=3, batch_size=5, seed=0)
    >>> len(b), len(b[0]), int((b[0] < 6).sum()), int((b[0] >= 6).sum())  # 3 of a's 6, b's 2
    (1, 5, 3, 2)
    """
    rng = np.random.default_rng(seed)
    sites = np.asarray(sites)
    members = [np.flatnonzero(sites == s) for s in sorted(set(sites.tolist()))]
    picked = np.concatenate([rng.choice(i, min(cap, len(i)), replace=False) for i in members])
    order = torch.as_tensor(rng.permutation(picked), dtype=torch.long)
    stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def pooled_key(profile: Profile, datasets: Sequence[str], seed: int, encoder_key: str | None,
               model_config: Mapping[str, Any], checksums: Mapping[str, str]) -> str:
    """The run key of a pooled fine-tuning: its recipe (:mod:`bus_paper.core.runs`): each
    dataset split on its own (:func:`labelled`: all labels, the profile's split seed), the parts
    pooled, one normaliser on the pooled training images, and the per-site cap of an epoch
    (:func:`site_cap`; in the key only when set, so uncapped runs keep their keys)."""
    from ...core.runs import SELECT_VAL_AUC_YOUDEN, config_part, recipe_key
    split = {"datasets": sorted(datasets), "scheme": "holdout per dataset, parts pooled",
             "split_seed": profile.finetune.split_seed}
    cap = site_cap(profile)
    return recipe_key("pooled", network=dict(model_config),
                      finetune=config_part(profile.finetune, without=("datasets", "seeds")),
                      data=config_part(profile.data), split=split, seed=seed,
                      encoder=encoder_key, checksums=dict(checksums),
                      selection=SELECT_VAL_AUC_YOUDEN,
                      **({} if cap is None else {"sampling": {"site_cap": cap}}))


@releases_run_locks
def pooled_finetune(profile: Profile, root: str | Path | None, datasets: Sequence[str],
                    seed: int = 0, row: str = "proposed"
                    ) -> dict[str, Any]:
    """Fine-tune Table 1 row ``row`` on the pooled ``datasets`` (epoch and threshold chosen on
    the pooled validation parts), cached under ``runs/finetune-pooled/<key>/``.

    The same stage, selection rule and deployable file as :func:`~bus_paper.train.finetune`; only
    the data differ. Single process (no torchrun): these runs are small.
    """
    from ...core.runs import recipe_version
    from ...data.checksum import dataset_checksum
    from ...paths import runs_dir
    from ...train.data import resolve_root
    from ...train.engine import hold_run_lock, read_cached_run
    from ...train.finetuning import (
        FinetuneStage,
        _canonical,
        deployable_state,
        read_predictions,
        select_and_predict,
        write_finished_run,
    )
    from ...train.pretraining import load_pretrained, network_config
    from ..p000.experiments import ROWS, encoder_for
    datasets = sorted(datasets)
    root = resolve_root(profile, root)
    r = ROWS[row]
    encoder = load_pretrained(Path(encoder_for(profile, root, r)))
    model_config = network_config(profile, r.baseline)
    key = pooled_key(profile, datasets, seed, encoder["key"], model_config,
                     {d: dataset_checksum(root, d) for d in datasets})
    run_dir = runs_dir() / "finetune-pooled" / key
    meta = {"train": "+".join(datasets), "datasets": datasets, "row": row, "seed": seed,
            "checkpoint": str(run_dir / "model.pt"), "run_dir": str(run_dir)}
    hold_run_lock(run_dir)
    if (result := read_cached_run(run_dir, read_predictions)) is not None:
        return result | meta
    t0 = time.perf_counter()
    data = pooled_labelled(profile, root, datasets)
    stage = FinetuneStage(profile, data, seed, run_dir, key, encoder["encoder"],
                          model_config=model_config,
                          strict=_canonical(encoder["model_config"]) == _canonical(model_config))
    if (cap := site_cap(profile)) is not None:  # each epoch: at most `cap` images of every site
        sites = [p.split(":", 1)[0] for p in data.paths["train"]]
        stage.epoch_batches = lambda epoch_seed: site_capped_batches(  # type: ignore[method-assign]
            sites, cap, stage.batch_size, epoch_seed, stage.drop_last)
    history = stage.fit()
    _, threshold, preds = select_and_predict(stage, data, profile)  # the same end as finetune's
    result = {"dataset": data.dataset, "threshold": threshold, "history": history.epochs,
              "n": {s: len(data.y[s]) for s in ("train", "val", "test")},
              "seconds": time.perf_counter() - t0, "encoder_key": encoder["key"],
              "recipe_version": recipe_version("pooled")}
    write_finished_run(run_dir, deployable_state(stage.model, profile, data, threshold,
                                                 data.dataset, model_config), preds, result)
    return result | meta | {"predictions": preds}


def leave_one_out(profile: Profile, root: str | Path | None, datasets: Sequence[str],
                  seeds: Sequence[int], row: str = "proposed",
                  tests: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """For each dataset, a model pooled over all the others, tested on it (:func:`transfer`);
    ``train`` reads "pooled" so the results sit in the matrix's tables as one more row."""
    tests = dict(tests or {})
    out = []
    for held in datasets:
        data = tests.get(held) or labelled(profile, root, held)
        tests[held] = data
        for s in seeds:
            run = pooled_finetune(profile, root, [d for d in datasets if d != held], s, row)
            out.append(transfer(run, data, profile) | {"train": "pooled", "pooled": run["train"],
                                                       "row": row, "seconds": run["seconds"],
                                                       "n_train": run["n"]["train"]})
    return out


# ----------------------------------------------------------------------------- the deployable model
#: the labelled ultrasound sites the deployable model is trained on (issue 19)
SITES: tuple[str, ...] = ("busi", "udiat", "busbra", "busuclm")


def deployable_model(profile: Profile, root: str | Path | None, seed: int = 0,
                     sites: Sequence[str] = SITES) -> dict[str, Any]:
    """The model for images from another hospital: the proposed model fine-tuned on the pooled
    leak-free splits of every site (epoch and threshold chosen on the pooled validation parts; the
    same cached run as :func:`pooled_finetune`), then calibrated by a temperature fitted on the
    pooled validation predictions. ``calibration`` holds what the model file gains: the
    temperature, and the threshold moved to the calibrated scale (temperature scaling is
    monotonic, so the decisions are those of the uncalibrated threshold). ``metrics`` are those of
    the calibrated probabilities on the pooled test parts. What it does on a site it never saw is
    estimated by :func:`leave_one_out` with the same recipe, not by these test parts."""
    r = pooled_finetune(profile, root, sites, seed, row="proposed")
    preds = r["predictions"]
    val, test = preds[preds.split == "val"], preds[preds.split == "test"]
    t = fit_temperature(val.label.to_numpy(), val.prob.to_numpy())
    threshold = float(scale([r["threshold"]], t)[0])
    p_test = scale(test.prob.to_numpy(), t)
    ece = {"before": expected_calibration_error(test.label.to_numpy(), test.prob.to_numpy()),
           "after": expected_calibration_error(test.label.to_numpy(), p_test)}
    return r | {"metrics": binary_metrics(test.label.to_numpy(), p_test, threshold),
                "threshold": threshold, "pretrained": True, "seed": seed,
                "calibration": {"temperature": t, "threshold": threshold,
                                "threshold_uncalibrated": float(r["threshold"]),
                                "ece_test": ece, "sites": list(sites)},
                "test_predictions": test.assign(prob=p_test)}


#: what the model card states for a new site, from the leave-one-site-out rows
NEW_SITE_METRICS = ("auc", "recall", "specificity")


def deployable_summary(runs: Sequence[Mapping[str, Any]], loo: pd.DataFrame,
                       n_boot: int = 1000) -> dict[str, Any]:
    """What the model card says of the deployable model: its decision threshold's sensitivity and
    specificity and its AUC on the pooled test parts of the sites it was trained on (mean over
    ``runs``, one per seed, with a bootstrap CI over test images), its calibration, and what to
    expect on a new site: the leave-one-site-out rows ``loo`` (a :func:`cross_site_table` of
    :func:`leave_one_out`), one per held-out site, with their AUC and the sensitivity and
    specificity of a threshold chosen, as the deployable model's was, on the validation parts of
    the sites it was trained on (``new_site_mean``: their means)."""
    if not runs:
        raise ValueError("no deployable run")
    test = [r["test_predictions"] for r in runs]
    y = test[0].label.to_numpy()
    if any(not np.array_equal(p.path.to_numpy(), test[0].path.to_numpy()) for p in test):
        raise ValueError("the seeds' runs must predict the same pooled test images")
    clusters = test[0]["cluster"].astype(str).to_numpy() if "cluster" in test[0] else None
    ci = seed_mean_ci(y, [p.prob.to_numpy() for p in test], [r["threshold"] for r in runs],
                      n_boot=n_boot, clusters=clusters)
    held = loo[loo["train"] == "pooled"] if "train" in loo else loo
    return {"seeds": [int(r["seed"]) for r in runs], "sites": list(runs[0]["calibration"]["sites"]),
            "n_test": int(y.size),
            "n_clusters": cluster_count(clusters, int(y.size)),
            "within": {m: [100 * v for v in ci[m]] for m in ("auc", "recall", "specificity")},
            "threshold": float(np.mean([r["threshold"] for r in runs])),
            "temperature": float(np.mean([r["calibration"]["temperature"] for r in runs])),
            "ece_before": 100 * float(np.mean([r["calibration"]["ece_test"]["before"] for r in runs])),
            "ece_after": 100 * float(np.mean([r["calibration"]["ece_test"]["after"] for r in runs])),
            "new_site": [{"site": str(h["test"]), "seeds": int(h["seeds"]),
                          **{f"{m}{end}": float(h[f"{m}{end}"]) for m in NEW_SITE_METRICS
                             for end in ("", "_lo", "_hi")}}
                         for _, h in held.iterrows()],
            "new_site_mean": {m: float(held[m].mean()) for m in NEW_SITE_METRICS}}


# ----------------------------------------------------------------------------- every run, ahead
def chapter_runs(profile: Profile, root: str | Path | None, rows: Sequence[str],
                 datasets: Sequence[str], seeds: Sequence[int], pooled_seeds: Sequence[int]
                 ) -> list[dict[str, Any]]:
    """Train (or read from the cache) every run the generalisation chapter uses, so that it then
    finds them cached (``bus-paper experiment generalisation``): the proposed model on each
    site, the pooled runs (each site left out, then all sites: the deployable model's run), then
    the other ``rows`` on each site. Each run is cached on its own as it finishes, so an
    interrupted call loses only the run in progress. One summary row per run."""
    out = []

    def note(kind: str, row: str, r: Mapping[str, Any]) -> None:
        preds = r["predictions"]
        test = preds[preds["split"] == "test"]
        auc = binary_metrics(test["label"].to_numpy(), test["prob"].to_numpy(),
                             float(r["threshold"]))["auc"]
        out.append({"kind": kind, "row": row, "train": r["train"], "seed": int(r["seed"]),
                    "auc": auc, "minutes": r["seconds"] / 60, "run_dir": r["run_dir"]})
    if "proposed" in rows:  # first: the model the chapter and the deployable model rest on
        for r in site_runs(profile, root, "proposed", datasets, seeds):
            note("site", "proposed", r)
        for held in [*datasets, None]:
            for s in pooled_seeds:
                r = pooled_finetune(profile, root, [d for d in datasets if d != held], s)
                note("pooled" if held is None else f"without {held}", "proposed", r)
    for row in [r for r in rows if r != "proposed"]:
        for r in site_runs(profile, root, row, datasets, seeds):
            note("site", row, r)
    return out


# ----------------------------------------------------------------------------- the chapter's views
def transfer_drops(transfers: Sequence[Mapping[str, Any]], datasets: Sequence[str],
                   n_boot: int = 1000) -> pd.DataFrame:
    """Every off-diagonal cell of the matrix against the diagonal of its column: a model from
    ``fine-tuned on`` and the tested site's own model on the same test images, paired on seeds
    and clusters (:func:`~bus_paper.papers.p000.experiments.paired_difference`), in AUC points."""
    from ..p000.experiments import paired_difference
    out = []
    for row in dict.fromkeys(t["row"] for t in transfers):
        for te in datasets:
            own = [t for t in transfers if t["row"] == row and t["train"] == te and t["dataset"] == te]
            for tr in datasets:
                if tr == te:
                    continue
                other = [t for t in transfers
                         if t["row"] == row and t["train"] == tr and t["dataset"] == te]
                d = paired_difference(other, own, "auc", n_boot=n_boot)
                out.append({"model": row, "tested on": te, "fine-tuned on": tr,
                            "AUC other site − own site": d["diff"], "95% CI low": d["lo"],
                            "95% CI high": d["hi"], "p": d["p"]})
    return pd.DataFrame(out, columns=["model", "tested on", "fine-tuned on",
                                      "AUC other site − own site", "95% CI low", "95% CI high", "p"])


def pooled_view(cross: pd.DataFrame, transfers: Sequence[Mapping[str, Any]],
                loo: Sequence[Mapping[str, Any]], loo_table: pd.DataFrame,
                datasets: Sequence[str], pooled_seeds: Sequence[int], row: str = "proposed",
                n_boot: int = 1000) -> pd.DataFrame:
    """Each held-out site: its own model (the pooled models' seeds, so the two compare like with
    like; and all seeds), the other single sites' models (mean), the pooled model trained
    without it (:func:`leave_one_out`, ``loo_table`` its :func:`cross_site_table`), and the
    pooled model minus the own model, paired on seeds and images."""
    from ..p000.experiments import paired_difference
    out = []
    for te in datasets:
        c = cross[(cross["row"] == row) & (cross["test"] == te)]
        own = [t for t in transfers if t["row"] == row and t["train"] == te and t["dataset"] == te
               and t["seed"] in pooled_seeds]
        pl = [t for t in loo if t["dataset"] == te]
        d = paired_difference(pl, own, "auc", n_boot=n_boot)
        out.append({"tested on": te,
                    "own site": 100 * float(np.mean([t["metrics"]["auc"] for t in own])),
                    "own site, all seeds": float(c[c["within"]]["auc"].iloc[0]),
                    "other single sites (mean)": float(c[~c["within"]]["auc"].mean()),
                    "pooled others": float(loo_table[loo_table["test"] == te]["auc"].iloc[0]),
                    "pooled − own site": d["diff"], "95% CI low": d["lo"], "95% CI high": d["hi"],
                    "pooled training images": int(np.mean([t["n_train"] for t in pl]))})
    return pd.DataFrame(out)


def deployable_view(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The model card's two columns from :func:`deployable_summary`: the seen sites' pooled test
    parts (AUC, and sensitivity and specificity at the threshold, with intervals) and a new site
    (the leave-one-site-out means)."""
    w = summary["within"]
    ci = [f"{w[m][0]:.1f} ({w[m][1]:.1f}–{w[m][2]:.1f})" for m in NEW_SITE_METRICS]
    mean = summary["new_site_mean"]
    return pd.DataFrame(
        {"all four sites' test parts (seen sites)": ci,
         "a new site (leave-one-site-out, mean)": [f"{mean[m]:.1f}" for m in NEW_SITE_METRICS]},
        index=["AUC (%)", "sensitivity at the threshold (%)", "specificity at the threshold (%)"])


def reliability_curves(transfers: Sequence[Mapping[str, Any]],
                       temps: Mapping[tuple[Any, str, int], float], row: str, train: str,
                       bins: int = 10) -> list[dict[str, Any]]:
    """The reliability diagram of the models of ``row`` fine-tuned on ``train``: within its site
    and across the other sites, before and after temperature scaling, all seeds pooled. Each
    entry: ``where``, ``scaled``, ``ece`` (%) and ``curve`` (:func:`reliability`, empty bins
    dropped)."""
    out = []
    for where in ("within", "across"):
        ts = [t for t in transfers if t["row"] == row and t["train"] == train
              and (t["dataset"] == train) == (where == "within")]
        if not ts:
            continue
        test = [t["predictions"].query("split == 'test'") for t in ts]
        y = np.concatenate([p["label"].to_numpy() for p in test])
        raw = np.concatenate([p["prob"].to_numpy() for p in test])
        scaled = np.concatenate([scale(p["prob"].to_numpy(), temps[row, train, int(t["seed"])])
                                 for p, t in zip(test, ts)])
        for is_scaled, q in ((False, raw), (True, scaled)):
            out.append({"where": where, "scaled": is_scaled,
                        "ece": 100 * expected_calibration_error(y, q, bins=bins),
                        "curve": reliability(y, q, bins=bins).dropna()})
    return out


def findings(cross: pd.DataFrame, drops: pd.DataFrame, view: pd.DataFrame,
             calib: pd.DataFrame, labels: Mapping[str, str], names: Mapping[str, str],
             profile: Profile, n_seeds: int, n_pooled: int) -> list[str]:
    """The chapter's closing summary, one markdown bullet per finding, from its tables: each
    model's within- and across-site AUC and where its transfer intervals lie, each held-out
    site's pooled-minus-own difference, and calibration before and after scaling."""
    from ...metrics import interval_position, position_counts
    lines = []
    for row, label in labels.items():
        c = cross[cross["row"] == row]
        w, o = c[c["within"]], c[~c["within"]]
        p = drops[drops["model"] == row]
        best, worst = o.loc[o["auc"].idxmax()], o.loc[o["auc"].idxmin()]
        lines.append(
            f"- **{label}**: mean AUC {w['auc'].mean():.1f} within a site, {o['auc'].mean():.1f} "
            f"on other sites. Of {len(p)} transfers, the AUC minus the tested site's own model; "
            f"intervals: {position_counts(p['95% CI low'], p['95% CI high'])}. Best transfer: "
            f"{names[best['train']]} → {names[best['test']]} ({best['auc']:.1f}); worst: "
            f"{names[worst['train']]} → {names[worst['test']]} ({worst['auc']:.1f}).")
    for _, v in view.iterrows():
        lines.append(
            f"- Held out **{names[v['tested on']]}**: pooled training on the other sites gives AUC "
            f"{v['pooled others']:.1f} against {v['own site']:.1f} for the site's own model "
            f"(difference {v['pooled − own site']:+.1f}, CI {v['95% CI low']:.1f} to "
            f"{v['95% CI high']:.1f}: interval "
            f"{interval_position(v['95% CI low'], v['95% CI high'])}).")
    where = calib.assign(where=np.where(calib["within"], "within site", "across sites"))
    mean = where.groupby(["row", "where"])[["ece_before", "ece_after"]].mean()
    for row, label in labels.items():
        if {(row, "within site"), (row, "across sites")} <= set(mean.index):
            a, b = mean.loc[(row, "within site")], mean.loc[(row, "across sites")]
            lines.append(f"- Calibration, {label}: ECE {a['ece_before']:.1f} % within a site and "
                         f"{b['ece_before']:.1f} % across sites before temperature scaling; "
                         f"{a['ece_after']:.1f} % and {b['ece_after']:.1f} % after.")
    lines.append(f"- Temperature scaling, ECE after minus before, over {len(calib)} (model, "
                 f"training site, tested site) cells: intervals "
                 f"{position_counts(calib['change_lo'], calib['change_hi'])}.")
    lines.append(f"\nProfile `{profile.name}`: {profile.data.image_size} px images, "
                 f"{profile.finetune.epochs} fine-tuning epochs, {n_seeds} seed(s) per cell, "
                 f"{n_pooled} for the pooled models. The `gpu` profile runs the paper's image size "
                 "and epochs.")
    return lines


# ----------------------------------------------------------------------------- calibration
def reliability(y, p, bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of predicted probability: count, mean prediction, observed frequency."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"y and p must be non-empty and of one shape, got {y.shape}, {p.shape}")
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    rows = [{"bin": b, "lo": b / bins, "hi": (b + 1) / bins, "count": int((idx == b).sum()),
             "mean_p": float(p[idx == b].mean()) if (idx == b).any() else np.nan,
             "observed": float(y[idx == b].mean()) if (idx == b).any() else np.nan}
            for b in range(bins)]
    return pd.DataFrame(rows)


def temperatures(sources: Mapping[tuple[Any, str, int], Mapping[str, Any]]
                 ) -> dict[tuple[Any, str, int], float]:
    """:func:`fit_temperature` of each fine-tuning result on its own validation predictions."""
    out = {}
    for k, run in sources.items():
        v = run["predictions"][run["predictions"]["split"] == "val"]
        out[k] = fit_temperature(v["label"].to_numpy(), v["prob"].to_numpy())
    return out


def calibration_table(transfers: Sequence[Mapping[str, Any]],
                      sources: Mapping[tuple[Any, str, int], Mapping[str, Any]],
                      bins: int = 10, n_boot: int = 1000, seed: int = 0,
                      temps: Mapping[tuple[Any, str, int], float] | None = None) -> pd.DataFrame:
    """ECE (in %) before and after temperature scaling, per (row, train, test): the seed mean with
    a two-level interval (:func:`bus_paper.core.stats.two_level_bootstrap`: seeds, then clusters
    of test images); the change (after - before) is paired on seeds and images. The temperature of
    a run is fitted on its own training site's validation predictions (``sources[row, train,
    seed]``, a fine-tuning result), never on the tested site; ``temps`` passes them in when
    :func:`temperatures` was already called."""
    from ...core.stats import ece_points, two_level_bootstrap
    temps = temperatures(sources) if temps is None else temps
    groups: dict[tuple[Any, str, str], list[Mapping[str, Any]]] = {}
    for t in transfers:
        groups.setdefault((t.get("row"), t["train"], t["dataset"]), []).append(t)
    statistic = ece_points(bins)
    rows = []
    for (row, train, test), runs in groups.items():
        y, probs, _ = aligned_test_predictions(runs)
        clusters = test_clusters(runs)
        ts = [temps[row, train, int(r["seed"])] for r in runs]
        after = np.stack([scale(p, t) for p, t in zip(probs, ts)])
        out = {"row": row, "train": train, "test": test, "seeds": len(runs),
               "clusters": cluster_count(clusters, len(y)), "within": train == test,
               "temperature": float(np.mean(ts))}
        for name, ps in (("ece_before", np.stack(probs)), ("ece_after", after)):
            ci = two_level_bootstrap(y, ps, clusters=clusters, statistic=statistic,
                                     n_boot=n_boot, seed=seed)
            out |= {name: ci.estimate, f"{name}_lo": ci.lo, f"{name}_hi": ci.hi}
        d = two_level_bootstrap(y, after, np.stack(probs), clusters, statistic=statistic,
                                n_boot=n_boot, seed=seed, paired_runs=True)
        out |= {"change": d.estimate, "change_lo": d.lo, "change_hi": d.hi}
        rows.append(out)
    return pd.DataFrame(rows)
