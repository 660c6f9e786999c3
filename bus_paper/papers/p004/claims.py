"""Paper 004 (Bashir & Bhosle 2025, multi-backbone feature fusion with classical classifiers): its
claims as data, and how each is measured from the paper004 chapter's result files.

Setting rules. The paper's "typical performance" ranges and its NN accuracy of 94.5 % were stated
for mammography (mini-MIAS among its data sets), so they are compared on mini-MIAS only; on BUSI and
UDIAT they are ``not testable here``. The ranges describe the attention-fusion model, so they rest
on its attention weights having moved away from uniform. The NN accuracy names the classifier and
"fusion", not attention: it is measured on the concatenated features. Image + BI-RADS fusion is
judged with the NN only: a kNN on the unscaled concatenation of 192 image features and a few
one-hot BI-RADS indicators measures distance almost entirely in one block, so it says nothing about
fusion (the chapter's kNN rows are left out on purpose).
"""

from __future__ import annotations

from ...core.stats import Check, Claim, attention_check, ssl_loss_check
from ..measure import Measured, MissingResult, Results, named, nan, not_testable

PAPER = "004"
TASKS = {"mias_abnormal": "mini-MIAS abnormal vs normal",
         "mias_malignant": "mini-MIAS malignant vs benign"}
# the chapter's name of each range (verdict_ranges.csv) -> our column, the range
RANGES = {"accuracy": ("accuracy 93–97 %", 93.0), "sensitivity": ("sensitivity 90–95 %", 90.0),
          "specificity": ("specificity 92–96 %", 92.0), "F1": ("F1 91–95 %", 91.0),
          "AUC": ("AUC 95–98 %", 95.0)}
BACKBONES = {"resnet50": "ResNet-50", "vgg16": "VGG16", "efficientnet_b0": "EfficientNet-B0"}


def _c(claim: str, kind: str, value: float, measure: str, sign: int = 0) -> Claim:
    return Claim(PAPER, claim, kind, value, measure, sign)  # type: ignore[arg-type]


CLAIMS: tuple[Claim, ...] = (
    *(_c(f"{name} (attention fusion + NN), {TASKS[t]}: the range's lower end is compared",
         "level", low, f"range {t} {metric}") for t in TASKS
      for metric, (name, low) in RANGES.items()),
    *(_c(f"the same ranges on {d}: they were stated for mammography, not ultrasound", "level",
         nan, "untestable paper004/verdict_ranges.csv") for d in ("BUSI", "UDIAT")),
    *(_c(f"the NN classifier's accuracy of 94.5 % on MIAS (fused features), {TASKS[t]}", "level",
         94.5, f"nn_accuracy {t}") for t in TASKS),
    *(_c(f"fusion beats a single backbone: concatenated features minus {label} alone, NN, AUC, "
         f"{TASKS[t]}", "difference", nan, f"paired {t} concat {b}", +1) for t in TASKS
      for b, label in BACKBONES.items()),
    *(_c(f"attention fusion beats plain concatenation: NN, AUC, {TASKS[t]}", "difference", nan,
         f"paired {t} attention concat", +1) for t in TASKS),
    _c("the NN is the best classifier: no paired interval between classifiers is recorded",
       "difference", nan, "untestable paper004/best_classifier.csv", +1),
    _c("image + BI-RADS beats the image alone: BUS-BRA, NN, AUC", "difference", nan,
       "clinical image_metadata image", +1),
    _c("image + BI-RADS beats BI-RADS alone: BUS-BRA, NN, AUC", "difference", nan,
       "clinical image_metadata metadata", +1),
    _c("mammography + ultrasound fusion improves detection: no public data set pairs the two "
       "modalities for the same women", "difference", nan, "untestable", +1),
)


def attention(r: Results, task: str) -> Check:
    # only each backbone's mean weight over the test images is recorded: a mean at 1/3 each could
    # in principle hide per-image weights that vary (this check would then fail wrongly); per-image
    # weights are for the retraining session to record
    w = r.one("paper004", "attention_weights", task=task)[list(BACKBONES.values())]
    return named("attention fusion", attention_check([w.to_numpy(dtype=float)]))


def pretrained(r: Results, task: str, feature_set: str) -> tuple[Check, ...]:
    """The SSL learning check of each encoder a feature set's features come from (the chapter's
    ``encoders.csv``): one backbone's set rests on that backbone's encoder, the fused and
    image sets on every SSL encoder of the task, the random-init floor and BI-RADS on none.
    A chapter executed before it recorded its encoders fails the check: nothing shows that they
    learned."""
    if feature_set in ("metadata",) or feature_set.startswith("random"):
        return ()
    try:
        t = r.csv("paper004", "encoders")
    except MissingResult:
        return (Check("ssl loss recorded", False, "paper004/encoders.csv is missing: the "
                      "chapter ran before it recorded its encoders' pretraining losses"),)
    t = t[t["task"] == task]
    if feature_set in BACKBONES:
        t = t[t["backbone"] == feature_set]
    if t.empty:
        raise MissingResult(f"paper004/encoders.csv: no encoder of {feature_set!r} for {task}")
    return tuple(named(f"{BACKBONES.get(e['backbone'], e['backbone'])} on {e['modality']}",
                       ssl_loss_check([e["first loss"], e["last loss"]], e["chance loss"]))
                 for e in t.to_dict("records"))


def _metrics(r: Results, task: str, feature_set: str) -> tuple[int, str]:
    m = r.one("paper004", "metrics", task=task, set=feature_set, classifier="nn")
    return int(m["test images"]), str(int(m["repeats"]))


def _range(r: Results, task: str, metric: str) -> Measured:
    t = r.one("paper004", "verdict_ranges", task=task, claim=RANGES[metric][0])
    n, repeats = _metrics(r, task, "attention")
    return Measured(t["measured"], t["lo"], t["hi"], n, None, repeats,
                    "paper004/verdict_ranges.csv",
                    (*pretrained(r, task, "attention"), attention(r, task)))


def _nn_accuracy(r: Results, task: str) -> Measured:
    m = r.one("paper004", "metrics", task=task, set="concat", classifier="nn")
    return Measured(m["accuracy"], m["accuracy_lo"], m["accuracy_hi"], int(m["test images"]),
                    None, str(int(m["repeats"])), "paper004/metrics.csv",
                    pretrained(r, task, "concat"))


def _paired(r: Results, task: str, a: str, b: str) -> Measured:
    p = r.one("paper004", "paired_auc", task=task, a=a, b=b, classifier="nn")
    n, repeats = _metrics(r, task, a)
    checks = tuple(dict.fromkeys((*pretrained(r, task, a), *pretrained(r, task, b),   # once each
                                  *(attention(r, task) for s in (a, b) if s == "attention"))))
    return Measured(p["difference"], p["lo"], p["hi"], n, None, repeats,
                    "paper004/paired_auc.csv", checks)


def _clinical(r: Results, a: str, b: str) -> Measured:
    p = r.one("paper004", "clinical_paired_auc", a=a, b=b, classifier="nn")
    m = r.one("paper004", "clinical_metrics", set=a, classifier="nn")
    return Measured(p["difference"], p["lo"], p["hi"], int(m["test images"]), None,
                    str(int(m["repeats"])), "paper004/clinical_paired_auc.csv",
                    tuple(dict.fromkeys((*pretrained(r, "busbra_clinical", a),
                                         *pretrained(r, "busbra_clinical", b)))))


MEASURES = {"range": _range, "nn_accuracy": _nn_accuracy, "paired": _paired,
            "clinical": _clinical, "untestable": lambda r, source="": not_testable(source)}


def measure(claim: Claim, r: Results) -> Measured:
    what, *args = claim.measure.split()
    return MEASURES[what](r, *args)
