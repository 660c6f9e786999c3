"""Paper 002 (Guo et al. 2022, lesion recognition as a contrastive auxiliary task): its claims as
data, and how each is measured from the paper002 chapter's result files.

The claims are the chapter's :data:`bus_paper.papers.p002.experiments.CLAIMS` (variant a minus variant b on
BUS-BRA's five official folds, the paper's value from its Tables 1-2); the interval is the
chapter's (folds resampled, then the lesions of each drawn fold). Every variant but the baseline adds the
contrastive loss L_con, so a claim rests on that loss having moved in training.
"""

from __future__ import annotations

from ...core.stats import Check, Claim, moved_check
from ..measure import Measured, Results, named, seeds_check
from .experiments import CLAIMS as CHAPTER_CLAIMS
from .experiments import LABELS

PAPER = "002"
BY_KEY = {c.key: c for c in CHAPTER_CLAIMS}
CLAIMS: tuple[Claim, ...] = tuple(Claim(PAPER, c.text, "difference", round(c.paper, 2), c.key)
                                  for c in CHAPTER_CLAIMS)


def variant_checks(r: Results, variant: str) -> list[Check]:
    """Best validation AUC of every fold above 0.5; L_con (where trained) fell by 5 % or more
    from the first to the last epoch (the mean over folds)."""
    log = r.csv("paper002", "training_log")
    runs = log[log["variant"] == variant].sort_values(["fold", "epoch"])
    label = LABELS[variant]
    checks = [seeds_check(label, runs.groupby("fold")["val_auc"].max(), "validation", "fold")]
    con = runs.dropna(subset=["train_con"])          # the baseline trains no L_con
    if len(con):
        by_fold = con.groupby("fold")["train_con"]
        checks.append(named(label, moved_check([by_fold.first().mean(), by_fold.last().mean()],
                                               name="contrastive loss")))
    return checks


def measure(claim: Claim, r: Results) -> Measured:
    c = BY_KEY[claim.measure]
    v = r.one("paper002", "verdicts", key=c.key)
    runs = r.csv("paper002", "runs")
    folds = runs[runs["variant"] == LABELS[c.a]]
    n_test = sum(int(s.split("/")[-1]) for s in folds["train / val / test images"])
    return Measured(v["measured"], v["ci_low"], v["ci_high"], n_test, None, f"{len(folds)} folds",
                    "paper002/verdicts.csv",
                    tuple(variant_checks(r, c.a) + variant_checks(r, c.b)))
