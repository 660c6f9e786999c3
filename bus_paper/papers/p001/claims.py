"""Paper 001 (Asif et al. 2025, MobileNetV2 + DenseNet121 fusion with CBAM): its claims as data,
and how each is measured from the paper001 chapter's result files.

Only the abstract is available; its claims were made on BUSI (and a private set), so they are
measured on BUSI here (the chapter's UDIAT numbers are an extra, not the paper's setting).
"""

from __future__ import annotations

from ...core.stats import Check, Claim
from ..measure import Measured, Results, nan, not_testable, seeds_check
from .experiments import PAPER_001

PAPER = "001"
CNNS = {"mobilenetv2": "MobileNetV2", "densenet121": "DenseNet121", "resnet50": "ResNet-50",
        "vgg16": "VGG16 (random init)"}
PARTS = {"no_attention": "attention (CBAM) adds to the fused model: proposed minus the fusion "
                         "without attention",
         "mobilenetv2_cbam": "fusion adds to MobileNetV2: proposed minus MobileNetV2 + CBAM alone",
         "densenet121_cbam": "fusion adds to DenseNet121: proposed minus DenseNet121 + CBAM alone"}
METHODS = ("Grad-CAM", "saliency", "SHAP")
PROPOSED = "proposed fusion"


def _c(claim: str, kind: str, value: float, measure: str, sign: int = 0) -> Claim:
    return Claim(PAPER, claim, kind, value, measure, sign)  # type: ignore[arg-type]


CLAIMS: tuple[Claim, ...] = (
    _c("AUC 0.9834 on BUSI", "level", PAPER_001["busi"]["auc"], "headline busi"),
    *(_c(f"significantly outperforms traditional CNNs: AUC above {label} on BUSI (paired)",
         "difference", nan, f"paired busi {m}", +1) for m, label in CNNS.items()),
    *(_c(f"{text}, AUC on BUSI (paired)", "difference", nan, f"paired busi {m}", +1)
      for m, text in PARTS.items()),
    *(_c(f"{method} shows the model focusing on relevant image features, BUSI: energy inside the "
         "lesion above the lesion's share of the image", "difference", nan,
         f"explain busi {method}", +1) for method in METHODS),
    _c("AUC 0.9320 on the private data set (2,171 images of 1,758 patients): the images are not "
       "public", "level", PAPER_001["private"]["auc"], "untestable"),
    _c("exceeds the diagnostic performance of radiologists: no reader data are public",
       "difference", nan, "untestable", +1),
)


def seeds(r: Results, model: str, d: str, label: str) -> Check:
    runs = r.csv("paper001", "runs")
    return seeds_check(label, runs[(runs["model"] == model) & (runs["dataset"] == d)]["auc"])


def _headline(r: Results, d: str) -> Measured:
    t = r.one("paper001", "metrics", row="proposed", dataset=d)
    return Measured(t["auc"], t["auc_lo"], t["auc_hi"], r.n_test(d), None, str(int(t["seeds"])),
                    "paper001/metrics.csv", (seeds(r, "proposed", d, PROPOSED),))


def _paired(r: Results, d: str, model: str) -> Measured:
    p = r.one("paper001", "paired", dataset=d, model=model, metric="auc")
    checks = (seeds(r, "proposed", d, PROPOSED), seeds(r, model, d, p["label"]))
    return Measured(p["difference"], p["ci_low"], p["ci_high"], r.n_test(d), None, p["seeds"],
                    "paper001/paired.csv", checks)


def _explain(r: Results, d: str, method: str) -> Measured:
    t = r.one("paper001", "explanation_summary", dataset=d, method=method)
    c = t["chance"]   # the lesion's mean share of the image, held fixed (as the chapter does)
    return Measured(t["energy"] - c, t["energy_lo"] - c, t["energy_hi"] - c, int(t["images"]),
                    None, str(int(t["seeds"])), "paper001/explanation_summary.csv",
                    (seeds(r, "proposed", d, PROPOSED),))


MEASURES = {"headline": _headline, "paired": _paired, "explain": _explain,
            "untestable": lambda r, source="": not_testable(source)}


def measure(claim: Claim, r: Results) -> Measured:
    what, *args = claim.measure.split()
    return MEASURES[what](r, *args)
