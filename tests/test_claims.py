"""The claims table (bus_paper.papers) from small fixture result files, the findings block of the
landing page, and the runner re-running a chapter when a chapter it reads changes."""

import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from bus_paper import papers
from bus_paper.book import chapter as book_chapter
from bus_paper.book import pages
from bus_paper.book import runner as pipeline
from bus_paper.config import load_profile
from bus_paper.core import stats as S
from bus_paper.provenance import save_table

BOOK = Path(__file__).resolve().parents[1] / "book"
PROV = {"profile": "cpu", "git": {"commit": "f" * 40, "dirty": False}, "timestamp": "2026-01-01"}


def write(root: Path, chapter: str, name: str, rows: list[dict]) -> None:
    save_table(root / chapter, name, pd.DataFrame(rows), PROV)


@pytest.fixture
def results(tmp_path) -> Path:
    """Result files of a few chapters: Table 1 (a proposed model that learned, a ConvNeXt with a
    seed below 0.5, a DINO whose loss stayed at chance), paper 002 (L_con that did not move),
    paper 004 (uniform attention)."""
    root = tmp_path / "results"
    write(root, "finetuning", "split_sizes", [{"dataset": d, "part": "test", "images": n}
                                              for d, n in (("busi", 127), ("udiat", 33))])
    write(root, "pretraining", "history", [{"epoch": 1, "train_loss": 4.8},
                                           {"epoch": 2, "train_loss": 0.9}])
    metrics = []
    for d in ("busi", "udiat"):
        for row in ("proposed", "convnext_tiny", "dino_vit"):
            # UDIAT's proposed interval reaches the paper's 98.1 (reproduced), BUSI's does not
            hi = 99.0 if d == "udiat" else 88.0
            metrics.append({"row": row, "dataset": d, "seeds": 3, "accuracy": 77.0,
                            "accuracy_lo": 70.0, "accuracy_hi": 83.0, "auc": 81.0,
                            "auc_lo": 73.0, "auc_hi": hi})
    write(root, "table1", "metrics", metrics)
    write(root, "table1", "paired", [
        {"dataset": d, "baseline": papers.PAPERS["000"].LABELS[b],
         "AUC proposed - baseline": 20.0, "95% CI low": 8.0, "95% CI high": 30.0}
        for d in ("busi", "udiat") for b in ("convnext_tiny", "dino_vit")])
    aucs = {("proposed", "busi"): (0.8, 0.82, 0.81), ("proposed", "udiat"): (0.8, 0.8, 0.8),
            ("convnext_tiny", "busi"): (0.53, 0.61, 0.65),
            ("convnext_tiny", "udiat"): (0.66, 0.75, 0.33),   # one seed below chance
            ("dino_vit", "busi"): (0.6, 0.62, 0.57), ("dino_vit", "udiat"): (0.7, 0.6, 0.6)}
    write(root, "table1", "runs", [{"row": r, "dataset": d, "seed": s, "auc": a[s]}
                                   for (r, d), a in aucs.items() for s in range(3)])
    write(root, "table1", "pretraining", [
        {"row": "convnext_tiny", "objective": "simclr", "first loss": 4.83, "last loss": 3.22},
        {"row": "dino_vit", "objective": "dino", "first loss": 10.92, "last loss": 10.89}])
    # paper 002: LR's contrastive loss 12.13 -> 12.03 (under 1 %), every fold's AUC above 0.5
    write(root, "paper002", "verdicts", [{"key": "lr_auc", "measured": 0.1, "ci_low": -0.6,
                                          "ci_high": 0.8}])
    write(root, "paper002", "training_log", [
        {"variant": v, "fold": f, "epoch": e, "val_auc": 0.7,
         "train_con": (12.13 - 0.1 * e) if v == "lr" else math.nan}
        for v in ("baseline", "lr") for f in range(2) for e in range(2)])
    write(root, "paper002", "runs", [{"variant": lab, "fold": f,
                                      "train / val / test images": "1277 / 222 / 376"}
                                     for lab in ("Baseline", "LR") for f in range(2)])
    # paper 004: attention weights at 1/3 each
    write(root, "paper004", "attention_weights", [
        {"task": t, "ResNet-50": 0.335, "VGG16": 0.337, "EfficientNet-B0": 0.328}
        for t in ("mias_abnormal", "mias_malignant")])
    write(root, "paper004", "verdict_ranges", [
        {"task": "mias_abnormal", "claim": "AUC 95–98 %", "measured": 73.8, "lo": 66.0,
         "hi": 81.1}])
    write(root, "paper004", "metrics", [{"task": "mias_abnormal", "set": "attention",
                                         "classifier": "nn", "test images": 66, "repeats": 3}])
    # its SSL encoders on mini-MIAS learned (EfficientNet-B0: 5.86 -> 4.84, at ln 127, did not)
    write(root, "paper004", "encoders", [
        {"task": "mias_abnormal", "modality": "mammography", "backbone": b, "init": "ssl",
         "key": f"ssl:{b}", "epochs": 5, "first loss": first, "last loss": last,
         "chance loss": math.log(127)}
        for b, first, last in (("resnet50", 4.81, 3.95), ("vgg16", 5.52, 4.20))])
    return root


def test_the_ssl_check_uses_each_runs_own_chance_loss(results):
    """Table 1's pretraining table records each run's chance loss (DINO: ln K with *its* K), so a
    DINO run with 1024 prototypes is judged against ln 1024 = 6.93, not the profile's ln 65536."""
    from bus_paper.papers.p000 import experiments as ex
    dino = ex.ROWS["dino_vit"]
    state = {"history": [{"train_loss": 6.9}, {"train_loss": 5.9}], "seconds": 60.0,
             "dino": {"out_dim": 1024}}
    row = ex.pretraining_summary(load_profile("cpu"), dino, state)
    assert row["chance loss"] == pytest.approx(math.log(1024)) and row["epochs"] == 2
    simclr = ex.pretraining_summary(load_profile("cpu"), ex.ROWS["convnext_tiny"],
                                    {"history": [{"train_loss": 4.8}], "seconds": 1.0})
    assert simclr["chance loss"] == pytest.approx(math.log(2 * 64 - 1))
    # the table shows the check beside the losses: 5.9 <= 0.9 ln 1024; 4.8 > 0.9 ln 127
    assert row["learned"] is True and simclr["learned"] is False
    write(results, "table1", "pretraining", [
        {"row": "convnext_tiny", "objective": "simclr", "first loss": 4.83, "last loss": 3.22,
         "chance loss": math.log(127)}, {**row, "first loss": 6.9, "last loss": 5.9}])
    by = papers.claims_table(results, "cpu").set_index("claim")
    assert by.loc["the proposed model beats DINO-ViT on BUSI (AUC, paired)", "mechanism"] == "passed"
    write(results, "table1", "pretraining", [{**row, "last loss": 6.5}])   # 6.5 > 0.9 x 6.93
    by = papers.claims_table(results, "cpu").set_index("claim")
    assert by.loc["the proposed model beats DINO-ViT on BUSI (AUC, paired)", "mechanism"] == \
        "failed: ssl loss below chance (DINO-ViT)"


def test_paper004_claims_rest_on_encoders_that_learned(results):
    """A paper 004 claim rests on the SSL encoders of the features it compares: the fused sets on
    every encoder of the task, one backbone's set on its own; a chapter run before it recorded
    them gives no evidence that they learned."""
    rng = "AUC 95–98 % (attention fusion + NN), mini-MIAS abnormal vs normal: the range's lower " \
          "end is compared"
    by = papers.claims_table(results, "cpu", ["004"]).set_index("claim")
    assert by.loc[rng, "mechanism"] == "failed: attention not uniform (attention fusion)"
    t = pd.read_csv(results / "paper004" / "encoders.csv")
    write(results, "paper004", "encoders", [
        *t.to_dict("records"),
        {**t.iloc[0].to_dict(), "backbone": "efficientnet_b0", "first loss": 5.86,
         "last loss": 4.84}])                                   # at chance: did not learn
    write(results, "paper004", "attention_weights", [
        {"task": "mias_abnormal", "ResNet-50": 0.6, "VGG16": 0.3, "EfficientNet-B0": 0.1}])
    by = papers.claims_table(results, "cpu", ["004"]).set_index("claim")
    assert by.loc[rng, "mechanism"] == \
        "failed: ssl loss below chance (EfficientNet-B0 on mammography)"
    assert by.loc[rng, "verdict"] == S.NOT_TESTED
    # a single backbone's set rests on that backbone only
    from bus_paper.papers.p004 import claims as c4
    r = papers.measure.Results(results, "cpu")
    assert [x.passed for x in c4.pretrained(r, "mias_abnormal", "vgg16")] == [True]
    assert c4.pretrained(r, "mias_abnormal", "random_concat") == ()
    assert len(c4.pretrained(r, "mias_abnormal", "concat")) == 3
    pair = "fusion beats a single backbone: concatenated features minus VGG16 alone, NN, AUC, " \
           "mini-MIAS abnormal vs normal"
    write(results, "paper004", "paired_auc", [{"task": "mias_abnormal", "a": "concat",
                                               "b": "vgg16", "classifier": "nn",
                                               "difference": 3.0, "lo": 1.0, "hi": 5.0}])
    write(results, "paper004", "metrics", [{"task": "mias_abnormal", "set": s, "classifier": "nn",
                                            "test images": 66, "repeats": 3}
                                           for s in ("attention", "concat")])
    by = papers.claims_table(results, "cpu", ["004"]).set_index("claim")
    assert by.loc[pair, "mechanism"] == \
        "failed: ssl loss below chance (EfficientNet-B0 on mammography)"   # VGG16's: once
    (results / "paper004" / "encoders.csv").unlink()
    by = papers.claims_table(results, "cpu", ["004"]).set_index("claim")
    assert by.loc[rng, "mechanism"] == "failed: ssl loss recorded"
    assert by.loc[rng, "verdict"] == S.NOT_TESTED
    assert by.loc[pair, "mechanism"] == "failed: ssl loss recorded"          # named once


def test_claims_table_follows_the_legend_and_the_learning_checks(results):
    t = papers.claims_table(results, "cpu")
    assert tuple(t.columns) == papers.COLUMNS
    # paper 001's and beyond's result files are absent: only claims that need none are there
    assert set(t["paper"]) == {"000", "001", "002", "004"}
    assert set(t[t["paper"] == "001"]["verdict"]) == {S.NOT_TESTABLE}
    assert any(m.startswith("beyond:") for m in t.attrs["missing"])   # ... and said so
    by = t.set_index("claim")
    # every row's word is the legend's for its numbers, checks and setting
    for _, r in t.iterrows():
        failed = r["mechanism"].startswith("failed")
        testable = not pd.isna(r["measured"])
        sign = 1 if r["kind"] == "difference" and pd.isna(r["paper_value"]) else 0
        assert r["verdict"] == S.verdict(r["kind"], r["paper_value"], r["ci_low"], r["ci_high"],
                                         learned=not failed, testable=testable, sign=sign)
        if failed:
            assert r["verdict"] == S.NOT_TESTED
        if not testable:
            assert r["verdict"] == S.NOT_TESTABLE and r["mechanism"] == "n/a"
    assert by.loc["AUC of the proposed model on UDIAT", "verdict"] == S.REPRODUCED
    assert by.loc["AUC of the proposed model on BUSI", "verdict"] == S.SMALLER
    assert by.loc["AUC of the proposed model on BUSI", "n_test"] == 127
    assert pd.isna(by.loc["AUC of the proposed model on BUSI", "n_clusters"])   # not clustered
    busi = by.loc["the proposed model beats ConvNeXt-Tiny on BUSI (AUC, paired)"]
    assert busi["verdict"] == S.REPRODUCED and busi["mechanism"] == "passed"
    assert busi["paper_value"] == pytest.approx(97.25 - 90.85)   # the paper's own Table 1 gap
    udiat = by.loc["the proposed model beats ConvNeXt-Tiny on UDIAT (AUC, paired)"]
    assert udiat["verdict"] == S.NOT_TESTED
    assert udiat["mechanism"] == "failed: seed AUCs above 0.5 (test) (ConvNeXt-Tiny)"
    dino = by.loc["the proposed model beats DINO-ViT on BUSI (AUC, paired)"]
    assert dino["mechanism"] == "failed: ssl loss below chance (DINO-ViT)"  # ln 65536 = 11.09
    lr = by.loc["LR raises AUC over the baseline (+1.5)"]
    assert lr["verdict"] == S.NOT_TESTED and "contrastive loss moved (LR)" in lr["mechanism"]
    assert lr["n_test"] == 752 and lr["seeds"] == "2 folds"
    rng = by.loc[by.index.str.startswith("AUC 95–98 % (attention fusion + NN)")].iloc[0]
    assert rng["mechanism"] == "failed: attention not uniform (attention fusion)"
    on_us = by.loc["the same ranges on BUSI: they were stated for mammography, not ultrasound"]
    assert on_us["verdict"] == S.NOT_TESTABLE and on_us["mechanism"] == "n/a"
    # for readers: percent with one decimal, words instead of NaN
    shown = papers.display(t, "000")
    assert "81.0 (73.0\u00a0to\u00a099.0)" in set(shown["measured (95% CI)"])   # unbroken interval
    assert not shown.isna().any().any() and "nan" not in shown.to_string().lower()
    counts = papers.verdict_counts(t)
    assert counts.loc["002", S.NOT_TESTED] == 1 and list(counts.index) == ["000", "001", "002",
                                                                            "004"]
    # a chapter's own claims: the legend's counts, the failed checks, the sources
    p2 = t[t["paper"] == "002"]
    text = papers.summary(p2)
    assert text.startswith(f"{len(p2)} claim") and f"1 *{S.NOT_TESTED}*" in text
    assert "contrastive loss moved (LR)" in text and "untested, not refuted" in text
    assert papers.source_files(t, "002") == ["paper002/verdicts.csv"]
    assert "tested on" in shown.columns and "source" not in shown.columns
    html = papers.styled(shown).to_html()
    assert "min-width: 14em" in html and "row_heading" not in html   # no row numbers


def test_table1_claims_use_the_whole_data_set_where_the_chapter_cross_validated_it(results):
    """UDIAT cross-validated: its 'beats' claims read the out-of-fold paired table, count every
    image and its clusters, and check every fold model of both sides; BUSI keeps the split."""
    labels = papers.PAPERS["000"].LABELS
    write(results, "table1", "cv_paired", [
        {"dataset": "udiat", "baseline": labels[b], "AUC proposed - baseline": 12.0,
         "95% CI low": 4.0, "95% CI high": 20.0, "p": 0.01} for b in ("convnext_tiny", "dino_vit")])
    write(results, "table1", "cv_metrics", [
        {"row": r, "dataset": "udiat", "auc": 80.0, "ci_low": 70.0, "ci_high": 88.0,
         "images": 163, "clusters": 150, "folds": 5, "repeats": 2, "lowest fold AUC": 60.0}
        for r in ("proposed", "convnext_tiny", "dino_vit")])
    write(results, "table1", "cv_runs", [
        {"row": r, "dataset": "udiat", "repeat": rep, "fold": f,
         "test AUC": 0.45 if (r, rep, f) == ("dino_vit", 1, 3) else 0.7}
        for r in ("proposed", "convnext_tiny", "dino_vit") for rep in range(2) for f in range(5)])
    by = papers.claims_table(results, "cpu").set_index("claim")
    conv = by.loc["the proposed model beats ConvNeXt-Tiny on UDIAT (AUC, paired)"]
    # the split's seed below 0.5 no longer decides: every fold model learned
    assert conv["mechanism"] == "passed" and conv["verdict"] == S.REPRODUCED  # 4-20 holds 7.9
    assert (conv["measured"], conv["n_test"], conv["n_clusters"]) == (12.0, 163, 150)
    assert conv["seeds"] == "2 x 5 folds" and conv["source"] == "table1/cv_paired.csv"
    dino = by.loc["the proposed model beats DINO-ViT on UDIAT (AUC, paired)"]
    assert dino["verdict"] == S.NOT_TESTED
    assert "fold AUCs above 0.5 (test) (DINO-ViT)" in dino["mechanism"]
    assert "ssl loss below chance (DINO-ViT)" in dino["mechanism"]
    busi = by.loc["the proposed model beats ConvNeXt-Tiny on BUSI (AUC, paired)"]
    assert busi["source"] == "table1/paired.csv" and busi["n_test"] == 127
    # every fold above 0.5 but the out-of-fold interval reaching below it: not shown to have learned
    t = pd.read_csv(results / "table1" / "cv_metrics.csv")
    t.loc[t["row"] == "convnext_tiny", "ci_low"] = 49.1
    t.to_csv(results / "table1" / "cv_metrics.csv", index=False)
    conv = papers.claims_table(results, "cpu").set_index("claim").loc[
        "the proposed model beats ConvNeXt-Tiny on UDIAT (AUC, paired)"]
    assert conv["verdict"] == S.NOT_TESTED
    assert conv["mechanism"] == "failed: test AUC above 0.5 (ConvNeXt-Tiny, out of fold)"


def test_a_baseline_whose_seeds_are_barely_above_chance_is_not_tested(results):
    """On a split: seeds 0.51-0.56 pass the per-seed check, but the seed-mean interval that
    reaches below 0.5 does not (EfficientNetV2-S on BUSI at 5 epochs)."""
    t = pd.read_csv(results / "table1" / "metrics.csv")
    by = papers.claims_table(results, "cpu").set_index("claim")
    claim = "the proposed model beats ConvNeXt-Tiny on BUSI (AUC, paired)"
    assert by.loc[claim, "mechanism"] == "passed"                     # interval from 73
    t.loc[(t["row"] == "convnext_tiny") & (t["dataset"] == "busi"), "auc_lo"] = 42.6
    t.to_csv(results / "table1" / "metrics.csv", index=False)
    row = papers.claims_table(results, "cpu").set_index("claim").loc[claim]
    assert row["verdict"] == S.NOT_TESTED
    assert row["mechanism"] == "failed: test AUC above 0.5 (ConvNeXt-Tiny)"


def test_direction_only_claims_and_seed_checks():
    assert S.verdict("difference", math.nan, 1.0, 5.0, sign=+1) == S.REPRODUCED
    assert S.verdict("difference", math.nan, -1.0, 5.0, sign=+1) == S.NOT_RESOLVED
    assert S.verdict("difference", math.nan, -9.0, -2.0, sign=+1) == S.CONTRADICTED
    assert S.verdict("difference", math.nan, -9.0, -2.0, sign=-1) == S.REPRODUCED
    with pytest.raises(ValueError):
        S.Claim("000", "x", "difference", math.nan)           # no number needs a sign
    assert not S.seed_auc_check([0.665, 0.748, 0.335]).passed
    assert S.seed_auc_check([66.5, 74.8, 51.0]).passed       # points are read as fractions
    assert not S.seed_auc_check([]).passed


def test_the_committed_claims_table():
    """The book's own claims: built from the committed results, the legend's word on every row,
    and every chapter it reads declared to the runner."""
    if not (BOOK / "results" / "table1").is_dir():
        pytest.skip("no committed results")
    t = papers.claims_table(BOOK / "results", "cpu")
    assert not t.attrs["missing"] and set(t["paper"]) == set(papers.PAPERS)
    assert set(t["verdict"]) <= set(S.LEGEND)
    assert (t[t["mechanism"].str.startswith("failed")]["verdict"] == S.NOT_TESTED).all()
    read = {s.split("/")[0] for s in t["source"].dropna() if s}
    assert read <= set(pipeline.READS["claims"])
    # the paper's robustness claim is answered by the generalisation chapter, transfer by transfer
    robust = t[t["claim"].str.startswith("robust across populations")]
    assert len(robust) == 12 and S.NOT_TESTABLE not in set(robust["verdict"])


# ----------------------------------------------------------------------------- findings
def test_findings_block_is_made_from_the_claims_table(tmp_path):
    book = tmp_path / "book"
    rows = [{"paper": "000", "claim": "AUC of the proposed model on BUSI", "kind": "level",
             "paper_value": 97.25, "measured": 81.1, "ci_low": 73.0, "ci_high": 88.2,
             "verdict": S.SMALLER, "mechanism": "passed", "n_test": 127, "n_clusters": None,
             "seeds": "3", "source": "table1/metrics.csv"},
            {"paper": "002", "claim": "LR raises AUC", "kind": "difference", "paper_value": 1.5,
             "measured": 0.1, "ci_low": -0.6, "ci_high": 0.8, "verdict": S.NOT_TESTED,
             "mechanism": "failed: contrastive loss moved (LR)", "n_test": 1875,
             "n_clusters": None, "seeds": "5 folds", "source": "paper002/verdicts.csv"}]
    write(book / "results", "claims", "claims", rows)
    block = pages.intro_blocks(book, book / "chapters")["findings"]
    assert "**AUC on BUSI**: 81.1 (73.0–88.2) % against the paper's 97.25: *smaller than " \
           "claimed*" in block
    assert "| verdict | 000 Wang | 002 Guo | all |" in block
    assert f"| {S.SMALLER} | 1 | 0 | 1 |" in block and f"| {S.NOT_TESTED} | 0 | 1 | 1 |" in block
    assert "| claims | 1 | 1 | 2 |" in block
    assert "untested, not refuted" in block
    assert "Cross-site performance has not been measured yet" in block
    cpu = load_profile("cpu")
    assert f"`cpu` profile: {cpu.data.image_size} px images" in block
    assert f"{cpu.finetune.epochs} fine-tuning epochs" in block

    # the cross-site result: counted from the generalisation chapter's paired transfers, the same
    # sentence on the landing page and in the model card
    write(book / "results", "generalisation", "transfer_drop", [
        {"model": "proposed", "tested on": "busi", "fine-tuned on": tr,
         "AUC other site − own site": x, "95% CI low": lo, "95% CI high": hi}
        for tr, x, lo, hi in (("udiat", -18.8, -29.1, -8.6), ("busbra", 2.7, -2.6, 8.6),
                              ("busuclm", -15.0, -26.4, -3.4))])
    block = pages.intro_blocks(book, book / "chapters")["findings"]
    sentence = ("the proposed model scores below the tested site's own model beyond the noise "
                "in 2 of 3 transfers, above it in 0, and 1 are not resolved")
    assert sentence in block
    assert sentence in pages.model_card_blocks(book, book / "chapters")["robustness"]

    # the SSL budget curve: one sentence per data set, the trend read from the point estimates
    assert "More pretraining" not in block
    curve = [{"ssl_epochs": e, "dataset": "udiat", "init": init, "auc": auc, "ci_low": auc - 9,
              "ci_high": auc + 8, "images": 163, "clusters": 159, "diff": diff,
              "diff_low": None if diff is None else diff - 11,
              "diff_high": None if diff is None else diff + 11,
              "ssl_learned": None if init == "random" else e > 1, "folds": 5, "repeats": 2}
             for e, init, auc, diff in ((0, "random", 58.8, None), (1, "ssl", 64.1, 5.3),
                                        (5, "ssl", 75.0, 16.3))]
    write(book / "results", "ssl_budget", "curve", curve)
    block = pages.intro_blocks(book, book / "chapters")["findings"]
    assert ("On UDIAT used whole (every image tested once in each of 2 repeats of grouped 5-fold "
            "cross-validation; 163 images, 159 clusters), the proposed model's AUC by "
            "self-supervised epochs is: random init 58.8 (49.8–66.8), 1 epoch 64.1, 5 epochs "
            "75.0 (66.0–83.0) % (the point estimates rise at every budget measured). After 5 "
            "epochs its paired difference from random initialisation is +16.3 (+5.3 to +27.3) "
            "points (95 % CI). The SSL loss failed its learning check at 1 epoch.") in block
    curve[1]["auc"] = 50.0
    write(book / "results", "ssl_budget", "curve", curve)
    assert "do not rise at every budget" in pages.intro_blocks(book, book / "chapters")["findings"]


# ----------------------------------------------------------------------------- runner
def test_a_reader_reruns_when_a_chapter_it_reads_changes(tmp_path, monkeypatch):
    from test_pipeline import make_notebook
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    monkeypatch.setitem(pipeline.READS, "reader", ("other",))
    # the reader comes first in book order (like 09_claims before 13_generalisation)
    make_notebook(tmp_path / "nb" / "01_reader.ipynb",
                  "import pathlib\nfrom bus_paper.book.chapter import chapter\n"
                  "ch = chapter('reader', profile, data_root, results_dir)\n"
                  "text = (ch.sibling_results('other') / 'x.csv').read_text()\n"
                  "pathlib.Path(results_dir, 'copy.csv').write_text(text)")
    make_notebook(tmp_path / "nb" / "02_other.ipynb",
                  "import pathlib\npathlib.Path(results_dir, 'x.csv').write_text('a\\n1\\n')")
    kw = {"notebooks_dir": tmp_path / "nb", "out": tmp_path / "book" / "chapters"}
    first = pipeline.run("smoke", **kw)
    assert [(o.notebook.name, o.status) for o in first] == [("other", "executed"),
                                                            ("reader", "executed")]
    results = tmp_path / "book" / "results"
    assert (results / "reader" / "copy.csv").read_text() == "a\n1\n"
    assert [o.status for o in pipeline.run("smoke", only=["reader"], **kw)] == ["up to date"]
    (results / "other" / "x.csv").write_text("a\n2\n")     # the sibling's result changed
    assert [o.status for o in pipeline.run("smoke", only=["reader"], **kw)] == ["executed"]
    assert (results / "reader" / "copy.csv").read_text() == "a\n2\n"
    (results / "other" / "figure.png").write_bytes(b"png")  # a figure is not what it reads
    assert [o.status for o in pipeline.run("smoke", only=["reader"], **kw)] == ["up to date"]

    # what it read is recorded in the executed chapter (and not left among its results); a read
    # it does not declare is reported, since a change there would not re-run it
    meta = nbformat.read(tmp_path / "book" / "chapters" / "01_reader.ipynb", as_version=4)
    assert meta.metadata["bus_paper"]["reads"] == ["other"]
    assert not (results / "reader" / book_chapter.READS_FILE).exists()
    monkeypatch.setitem(pipeline.READS, "reader", ())
    [rerun] = pipeline.run("smoke", only=["reader"], **kw)
    assert rerun.status == "executed" and "WARNING: it read the results of other without " \
        "declaring them" in rerun.note


def test_every_chapter_declares_the_siblings_its_claims_read():
    """The chapters that judge their own claims read other chapters' learning checks: measured
    here with the calls the notebooks make, on the committed results."""
    calls = {"ablations": (["000"], lambda c: c.measure.startswith("ablation")),
             "paper001": (["001"], None), "paper002": (["002"], None),
             "paper004": (["004"], None),
             "ssl_budget": (["000"], lambda c: c.measure.startswith("ssl_budget"))}
    for name, (which, only) in calls.items():
        seen = set()
        papers.claims_table(lambda n: seen.add(n) or BOOK / "results" / n, "cpu", which, only=only)
        assert seen - {name} <= set(pipeline.READS.get(name, ())), name
        source = (BOOK.parent / "notebooks").glob(f"*_{name}.ipynb")
        assert f'claims_table(ch.sibling_results, ch.profile, ["{which[0]}"]' in \
            next(source).read_text().replace('\\"', '"'), name
