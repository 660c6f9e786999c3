"""Paper 000 (Wang et al. 2025, the multiscale SSL CoAtNet): its claims as data, and how each is
measured from the book's result files (chapters 02-08, 13 and 14).

The paper's numbers come from its tables (``bus_paper/papers/literature/paper_000.toml``); a claim it makes
without a number ("beats", "helps", "focuses on") is a difference with ``paper_value`` NaN and the
claimed sign. "Beats every baseline" is one claim per baseline and data set, with the paper's own
Table 1 difference as its value; "robust across populations" is one claim per transfer of the
generalisation chapter (fine-tuned on one site, tested on another, against that site's own model).
"""

from __future__ import annotations

import math

import pandas as pd

from ...core import MissingResult
from ...core.stats import Check, Claim, auc_above_chance_check
from ..literature import paper_000
from ..measure import Measured, Results, named, nan, not_testable, seeds_check

PAPER = "000"
SETS = {"udiat": "UDIAT", "busi": "BUSI"}                      # the paper's two data sets
SITES = {"busi": "BUSI", "udiat": "UDIAT", "busbra": "BUS-BRA", "busuclm": "BUS-UCLM"}
BASELINES = ("convnext_tiny", "efficientnetv2_s", "swin_tiny", "dino_vit", "simclr_resnet50")
ABLATIONS = {"no_ssl": "No SSL (random init)", "no_fusion": "No multiscale fusion",
             "single_scale": "Single-scale input only", "reduced_aug": "Reduced augmentations"}
PROPOSED = "proposed model"

_T1 = paper_000("table1").set_index(["model", "dataset"])
_AB = paper_000("ablations").set_index(["variant", "dataset"])
LABELS = {m: _T1.loc[(m, "busi"), "label"] for m in BASELINES}   # as table1/paired.csv names them
SHORT = {m: label.split(" (")[0] for m, label in LABELS.items()}  # "DINO-ViT", "SimCLR"


def _gap(table, a: str, b: str, d: str, metric: str) -> float:
    """The paper's own difference a - b (its tables, rounded as printed)."""
    return round(float(table.loc[(a, d), metric] - table.loc[(b, d), metric]), 2)


def _c(claim: str, kind: str, value: float, measure: str, sign: int = 0) -> Claim:
    return Claim(PAPER, claim, kind, value, measure, sign)  # type: ignore[arg-type]


CLAIMS: tuple[Claim, ...] = (
    *(_c(f"{name} of the proposed model on {SETS[d]}", "level", float(_T1.loc[("proposed", d), m]),
         f"headline {d} {m}") for d in SETS
      for m, name in (("accuracy", "accuracy"), ("auc", "AUC"))),
    *(_c(f"the proposed model beats {SHORT[b]} on {SETS[d]} (AUC, paired)", "difference",
         _gap(_T1, "proposed", b, d, "auc"), f"beats {d} {b}") for d in SETS for b in BASELINES),
    *(_c(f"SSL transformers (DINO-ViT, Swin) beat the CNN baselines on {SETS[d]}: no paired "
         "interval between two baselines was computed, and seed-mean AUCs alone cannot rank them",
         "difference", nan, "untestable", +1) for d in SETS),
    *(_c(f"{label} lowers AUC on {SETS[d]} (Tables 4-5)", "difference",
         _gap(_AB, v, "full", d, "auc"), f"ablation {d} {v} auc") for d in SETS
      for v, label in ABLATIONS.items()),
    *(_c(f"SSL pretraining raises AUC over random init on {SETS[d]} (Tables 4-5), every image "
         "tested once: grouped k-fold cross-validation at the longest SSL budget of the budget "
         "curve", "difference", _gap(_AB, "full", "no_ssl", d, "auc"), f"ssl_budget {d}")
      for d in SETS),
    *(_c(f"removing SSL costs 7-9 accuracy points on {SETS[d]} (Tables 4-5)", "difference",
         _gap(_AB, "no_ssl", "full", d, "accuracy"), f"ablation {d} no_ssl accuracy")
      for d in SETS),
    _c("SSL pretraining helps most with few labels: AUC gain over random init with 10 % of "
       "BUSI's labels (stated, no experiment)", "difference", nan, "label_efficiency busi", +1),
    *(_c(f"the heatmaps focus on the lesion (Fig. 3), {SETS[d]}: Grad-CAM energy inside the "
         "lesion above the lesion's share of the image", "difference", nan, f"heatmaps {d}", +1)
      for d in SETS),
    _c("higher than the prior literature (Tables 2-3): the cited works used other splits, "
       "resolutions and pretraining; their numbers are quoted, not re-run", "level", nan,
       "untestable literature/table2.csv"),
    *(_c(f"robust across populations: fine-tuned on {SITES[tr]}, tested on {SITES[te]}, AUC not "
         f"below {SITES[te]}'s own model", "difference", nan, f"robust {tr} {te}", +1)
      for te in SITES for tr in SITES if tr != te),
)


# ----------------------------------------------------------------------------- learning checks
def proposed_checks(r: Results, d: str, runs: str = "table1") -> list[Check]:
    """The proposed model learned: its SSL loss fell below chance and every fine-tuning seed on
    ``d`` is above AUC 0.5 (``runs``: the chapter whose runs.csv lists the seeds)."""
    loss = r.csv("pretraining", "history")["train_loss"]
    t = r.csv(runs, "runs")
    col = "row" if "row" in t.columns else "variant"
    aucs = t[(t[col].isin(("proposed", "full"))) & (t["dataset"] == d)]["auc"]
    return [r.ssl_check(PROPOSED, loss), seeds_check(PROPOSED, aucs)]


def baseline_ssl_check(r: Results, b: str) -> Check:
    """Baseline ``b``'s pretraining loss fell below chance (Table 1's pretraining table)."""
    pre = r.one("table1", "pretraining", row=b)
    # the run's own chance loss where the table records it (older tables: the profile's)
    chance = pre.get("chance loss")
    return r.ssl_check(SHORT[b], [pre["first loss"], pre["last loss"]], pre["objective"],
                       None if chance is None or math.isnan(chance) else float(chance))


def baseline_checks(r: Results, b: str, d: str) -> list[Check]:
    runs = r.csv("table1", "runs")
    aucs = runs[(runs["row"] == b) & (runs["dataset"] == d)]["auc"]
    return [baseline_ssl_check(r, b), seeds_check(SHORT[b], aucs)]


def within_check(r: Results, site: str) -> Check:
    """The proposed model fine-tuned on ``site`` learned there: its within-site test AUC interval
    lies above 0.5 (the generalisation chapter keeps no per-seed AUCs)."""
    row = r.one("generalisation", "cross_site", row="proposed", train=site, test=site)
    return named(f"{PROPOSED}, {SITES[site]}", auc_above_chance_check(row["auc_lo"], "test"))


# ----------------------------------------------------------------------------- measurements
def _headline(r: Results, d: str, m: str) -> Measured:
    t = r.one("table1", "metrics", row="proposed", dataset=d)
    return Measured(t[m], t[f"{m}_lo"], t[f"{m}_hi"], r.n_test(d), None, str(int(t["seeds"])),
                    "table1/metrics.csv", tuple(proposed_checks(r, d)))


def _cv_rows(r: Results, name: str, d: str) -> pd.DataFrame | None:
    """Table 1's cross-validated ``name`` table (cv_metrics, cv_paired, cv_runs) for data set
    ``d``; None where the chapter did not cross-validate ``d`` (or predates it)."""
    try:
        t = r.csv("table1", name)
    except MissingResult:
        return None
    t = t[t["dataset"] == d]
    return t if len(t) else None


def _beats(r: Results, d: str, b: str) -> Measured:
    """The proposed model minus baseline ``b`` on ``d``, paired: out of fold over the whole data
    set where Table 1's chapter cross-validated it (every image tested once per repeat; every
    fold model of both sides checked), else on the test split over the seeds. Both sides must
    have learned: every seed (fold) above AUC 0.5 and the interval of their mean AUC too."""
    cv = _cv_rows(r, "cv_paired", d)
    if cv is not None:
        p = cv[cv["baseline"] == LABELS[b]]
        m = _cv_rows(r, "cv_metrics", d)
        folds = _cv_rows(r, "cv_runs", d)
        if len(p) != 1 or m is None or folds is None or b not in set(m["row"]):
            raise MissingResult(f"table1/cv_*.csv: no cross-validation of {b} on {d}")
        p, m = p.iloc[0], m.set_index("row")
        checks = [r.ssl_check(PROPOSED, r.csv("pretraining", "history")["train_loss"]),
                  baseline_ssl_check(r, b),
                  *(seeds_check(name, folds[folds["row"] == key]["test AUC"], unit="fold")
                    for key, name in (("proposed", PROPOSED), (b, SHORT[b]))),
                  *(named(f"{name}, out of fold", auc_above_chance_check(m.loc[key, "ci_low"],
                                                                          "test"))
                    for key, name in (("proposed", PROPOSED), (b, SHORT[b])))]
        at = m.loc[b]
        return Measured(p["AUC proposed - baseline"], p["95% CI low"], p["95% CI high"],
                        int(at["images"]), int(at["clusters"]),
                        f"{int(at['repeats'])} x {int(at['folds'])} folds", "table1/cv_paired.csv",
                        tuple(checks))
    p = r.one("table1", "paired", dataset=d, baseline=LABELS[b])
    seeds = r.one("table1", "metrics", row=b, dataset=d)["seeds"]
    # both sides' seed-mean AUC intervals above 0.5: every seed a hair above chance (0.51, 0.56,
    # 0.52) is not a model that learned
    mean_checks = [named(name, auc_above_chance_check(
        r.one("table1", "metrics", row=key, dataset=d)["auc_lo"], "test"))
        for key, name in (("proposed", PROPOSED), (b, SHORT[b]))]
    return Measured(p["AUC proposed - baseline"], p["95% CI low"], p["95% CI high"], r.n_test(d),
                    None, str(int(seeds)), "table1/paired.csv",
                    tuple(proposed_checks(r, d) + baseline_checks(r, b, d) + mean_checks))


def _ablation(r: Results, d: str, v: str, metric: str) -> Measured:
    p = r.one("ablations", "paired", dataset=d, variant=v, metric=metric)
    runs = r.csv("ablations", "runs")
    aucs = runs[(runs["variant"] == v) & (runs["dataset"] == d)]["auc"]
    checks = proposed_checks(r, d, "ablations") + [seeds_check(ABLATIONS[v], aucs)]
    return Measured(p["difference"], p["ci_low"], p["ci_high"], r.n_test(d), None,
                    str(len(aucs)), "ablations/paired.csv", tuple(checks))


def _label_efficiency(r: Results, d: str) -> Measured:
    t = r.csv("label_efficiency", "paired")
    p = t[t["dataset"] == d].sort_values("fraction").iloc[0]        # the fewest labels
    runs = r.csv("label_efficiency", "runs")
    at = runs[(runs["dataset"] == d) & (runs["fraction"] == p["fraction"])]
    checks = [r.ssl_check(PROPOSED, r.csv("pretraining", "history")["train_loss"]),
              *(seeds_check(f"{init} init, {p['fraction']:.0%} of the labels",
                            at[at["init"] == init]["auc"]) for init in ("SSL", "random"))]
    return Measured(p["AUC SSL − random"], p["95% CI low"], p["95% CI high"], r.n_test(d), None,
                    str(at["seed"].nunique()), "label_efficiency/paired.csv", tuple(checks))


def _heatmaps(r: Results, d: str) -> Measured:
    # energy in the lesion minus chance (the lesion's mean share of the image, over the same
    # images): the chance level is held fixed, as the heatmaps chapter compares them
    t = r.one("heatmaps", "summary", model="proposed", dataset=d)
    c = t["chance"]
    return Measured(t["energy"] - c, t["energy_lo"] - c, t["energy_hi"] - c, int(t["images"]),
                    None, str(int(t["seeds"])), "heatmaps/summary.csv",
                    tuple(proposed_checks(r, d)))


def _ssl_budget(r: Results, d: str) -> Measured:
    """SSL minus random init, out of fold, at the curve's longest budget (chapter 14)."""
    curve = r.csv("ssl_budget", "curve")
    at = curve[curve["dataset"] == d]
    if at.empty:  # the profile's [papers.p000] cv_datasets leave it out: not run at this budget
        return Measured(source="ssl_budget/curve.csv", checks=(Check(
            f"cross-validated at this budget ({SETS[d]})", False,
            f"{d} is not in the profile's [papers.p000] cv_datasets"),))
    t = at[at["ssl_epochs"] == at["ssl_epochs"].max()].iloc[0]
    runs = r.csv("ssl_budget", "runs")
    runs = runs[runs["dataset"] == d]
    # both sides learned, by the rule the ablations use for "No SSL": every fold's test AUC
    # above 0.5, for the random-init models as for the SSL ones
    checks = [r.ssl_check(f"{PROPOSED}, {int(t['ssl_epochs'])} SSL epochs", [t["ssl_loss"]]),
              named(f"{PROPOSED}, out of fold", auc_above_chance_check(t["ci_low"], "test")),
              *(seeds_check(f"{name}, {SETS[d]}", runs[runs["ssl_epochs"] == e]["test AUC"],
                            unit="fold")
                for e, name in ((t["ssl_epochs"], f"{int(t['ssl_epochs'])} SSL epochs"),
                                (0, "random init")))]
    return Measured(t["diff"], t["diff_low"], t["diff_high"], int(t["images"]),
                    int(t["clusters"]), f"{int(t['repeats'])} x {int(t['folds'])} folds",
                    "ssl_budget/curve.csv", tuple(checks))


def _robust(r: Results, tr: str, te: str) -> Measured:
    t = r.one("generalisation", "transfer_drop", model="proposed", **{"tested on": te,
                                                                      "fine-tuned on": tr})
    cell = r.one("generalisation", "cross_site", row="proposed", train=tr, test=te)
    checks = [r.ssl_check(PROPOSED, r.csv("pretraining", "history")["train_loss"]),
              within_check(r, tr), within_check(r, te)]
    return Measured(t["AUC other site − own site"], t["95% CI low"], t["95% CI high"],
                    int(cell["test images"]), None, str(int(cell["seeds"])),
                    "generalisation/transfer_drop.csv", tuple(checks))


MEASURES = {"headline": _headline, "beats": _beats, "ablation": _ablation,
            "label_efficiency": _label_efficiency, "heatmaps": _heatmaps, "robust": _robust,
            "ssl_budget": _ssl_budget,
            "untestable": lambda r, source="": not_testable(source)}


def measure(claim: Claim, r: Results) -> Measured:
    what, *args = claim.measure.split()
    return MEASURES[what](r, *args)
