"""Beyond the papers (the generalisation chapter): our own claims, as data, measured like the
papers'. Pooling the other three sites' training data is the usual remedy for a model that does
not travel; the claim tested is that it reaches the held-out site's own model (no number: the
pooled model must not be lower).
"""

from __future__ import annotations

from ...core.stats import Claim
from ..measure import Measured, Results, nan
from ..p000.claims import PROPOSED, SITES, within_check

PAPER = "beyond"
CLAIMS: tuple[Claim, ...] = tuple(
    Claim(PAPER, f"training on the other three sites pooled reaches {name}'s own model "
                 f"(proposed model, AUC on {name})", "difference", nan, site, +1)
    for site, name in SITES.items())


def measure(claim: Claim, r: Results) -> Measured:
    site = claim.measure
    v = r.one("generalisation", "pooled_view", **{"tested on": site})
    pooled = r.one("generalisation", "pooled", row="proposed", train="pooled", test=site)
    checks = (r.ssl_check(PROPOSED, r.csv("pretraining", "history")["train_loss"]),
              within_check(r, site))
    seeds = int(pooled["seeds"])   # the own-site model of the comparison: the same seed(s)
    return Measured(v["pooled − own site"], v["95% CI low"], v["95% CI high"],
                    int(pooled["test images"]), None, f"{seeds} vs {seeds}",
                    "generalisation/pooled_view.csv", checks)
