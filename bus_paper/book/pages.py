"""The book's generated parts, written from the executed chapters and their result files.

- Every executed chapter gets a *rerun* box right under its title (:mod:`.boxes`).
- ``book/model_card.md`` and ``book/reproducibility.md`` are hand-written prose with generated
  blocks between ``<!-- bus-paper:begin NAME -->`` and ``<!-- bus-paper:end NAME -->``; only the
  blocks are rewritten, from ``book/results/<chapter>/*.json`` and the chapters'
  ``metadata.bus_paper`` (the provenance records), so the numbers cannot drift from the results.

:func:`refresh` does all of it. ``bus-paper run`` calls it after executing, ``bus-paper book`` calls
it on its staged copy before building (the HTML always matches the results it is built from), and
``bus-paper pages`` refreshes the committed files without executing anything (``--check``: only say
whether they are current). The output is a function of the files only (no clock), so refreshing
twice changes nothing.

The model card reads ``data/``, ``pretraining/``, ``finetuning/``, ``table1/`` and ``heatmaps/``.
Cross-site metrics and calibration come from ``book/results/generalisation/`` when it exists: every
table result there (``save_table``: ``columns`` + ``rows``, at most :data:`MAX_GENERIC_ROWS` rows)
is shown, the ones whose name contains ``calib`` or ``ece`` under *calibration*, the others under
*across sites*, with the ``lines`` of any ``*verdict*.json``; otherwise the card says "not yet
measured".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core import MISSING
from ..provenance import atomic_write_text
from .boxes import (  # noqa: F401 (the CLI's and the tests' names)
    CHAPTER_STEM,
    EMPTY_CACHE,
    HIDE_INPUT,
    RERUN_ID,
    add_rerun_cell,
    book_estimate,
    chapter_estimate,
    chapter_records,
    chapter_times,
    declared_parameters,
    hide_code,
    older_chapters,
    refresh_chapter,
    times_markdown,
)
from .format import (  # noqa: F401
    MissingResult,
    _missing,
    ci,
    load,
    md_table,
    num,
    plain,
    rows,
    short_commit,
    signed_ci,
    table,
)

log = logging.getLogger(__name__)

MAX_GENERIC_ROWS = 40
_BLOCK = re.compile(r"(<!-- bus-paper:begin (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- bus-paper:end (?P=name) -->)", re.DOTALL)


# ----------------------------------------------------------------------------- blocks
def fill_blocks(text: str, blocks: Mapping[str, str], page: str = "page") -> str:
    """Replace the body of every ``bus-paper:begin NAME`` block; an unknown NAME is an error."""
    unknown = sorted({m["name"] for m in _BLOCK.finditer(text)} - set(blocks))
    if unknown:
        raise ValueError(f"{page}: no generator for block(s) {unknown}; known: {sorted(blocks)}")
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m["name"]].strip("\n") + "\n" + m.group(4),
                      text)


def _guarded(make: Callable[[], str]) -> str:
    """A block, or a line saying why it is not there: a chapter that has not run, or a result
    file in another shape than expected (which must not stop the rest of the book building)."""
    try:
        return make()
    except MissingResult as err:
        return f"*Not available: {err}.*"
    except (KeyError, IndexError, TypeError, ValueError) as err:
        log.warning("bus-paper pages: warning: a generated block failed: %s: %s",
                    type(err).__name__, err)
        return f"*Not available: a result file has an unexpected shape ({type(err).__name__}).*"


def _labels(values: Sequence[Any], prefix: str) -> tuple[list[str], list[Any]]:
    """One label per distinct value (first seen first): ``D1, D1, D2`` and the distinct values."""
    distinct: list[Any] = []
    labels = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
        labels.append(f"{prefix}{distinct.index(v) + 1}")
    return labels, distinct


# ----------------------------------------------------------------------------- reproducibility
def _seeds(results: Path, rec: Mapping[str, Any]) -> str:
    path = results / rec["name"] / "provenance.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("seeds") is not None:
            return ", ".join(map(str, saved["seeds"]))
        seed = saved.get("provenance", {}).get("seed")
        if seed is not None:
            return str(seed)
    seed = rec["provenance"].get("seed", rec.get("parameters", {}).get("seed"))
    return MISSING if seed is None else str(seed)


def _hardware_key(hw: Mapping[str, Any]) -> tuple:
    cuda = hw.get("cuda") or {}
    return (hw.get("cpu"), hw.get("cores_usable"), hw.get("cores"), cuda.get("device"),
            cuda.get("count"), hw.get("torch"), hw.get("python"), hw.get("platform"),
            hw.get("avx512_bf16"), hw.get("amx_bf16"))


def _bf16(hw: Mapping[str, Any]) -> str:
    """The CPU's bf16 instructions in a hardware record (provenance.hardware), or "no"."""
    f = [n for n, k in (("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16")) if hw.get(k)]
    return ", ".join(f) or "no"


def empty_cache_markdown(results: Path) -> str:
    """The book's time from an empty cache, as ``bus-paper run --from-empty-cache`` recorded it
    (``results/reproducibility/empty_cache.json``), against the profile's ``book_minutes``."""
    path = results / EMPTY_CACHE
    if not path.is_file():
        return ("*Not measured by the runner yet*: `bus-paper run --profile cpu "
                "--from-empty-cache` (with `runs/` and `.cache/` moved aside) re-executes every "
                "chapter and writes `book/results/reproducibility/empty_cache.json`, which this "
                "paragraph then reports. The measurements made by hand are below.")
    r = json.loads(path.read_text())
    hw = r.get("hardware") or {}
    bf16 = _bf16(hw)
    machine = (f"{hw.get('cpu', 'an unknown CPU')}, {hw.get('cores_usable', '?')} cores, "
               f"{'no bf16 in hardware' if bf16 == 'no' else f'bf16 in hardware ({bf16})'}"
               + (f", GPU {hw['cuda'].get('device')}" if hw.get("cuda") else ""))
    target = r.get("target_minutes")
    failed = [c["chapter"] for c in r.get("chapters", []) if c.get("status") != "executed"]
    complete = bool(r.get("complete")) and not failed
    verdict = ("" if target is None or not complete else
               f", {'within' if r.get('within_target') else 'over'} the profile's target of "
               f"{target:g} minutes")
    when = str(r.get("started", ""))[:16].replace("T", " ")
    head = (f"`bus-paper run --profile {r.get('profile')} --from-empty-cache` took "
            f"**{r['minutes']:.1f} minutes** from {when} UTC, at commit "
            f"{short_commit(r.get('git'))}, on {machine}{verdict}."
            + ("" if complete else f" **Incomplete**: {', '.join(failed) or 'a chapter'} did not "
               "execute, so the time covers less than the whole book."))
    rows_ = [(c["chapter"], c["status"], f"{c['minutes']:.1f}") for c in r.get("chapters", [])]
    table_ = md_table(["chapter", "status", "minutes"], rows_, ["---", "---", "---:"])
    return head + "\n\n" + table_ + \
        ("\n\nEach chapter's minutes include the training it was the first to need; runs it "
         "shares with earlier chapters were cached by then.")


def reproducibility_blocks(book: Path, chapters: Path) -> dict[str, str]:
    results = book / "results"
    recs = chapter_records(chapters)
    if not recs:
        none = "*No executed chapter yet (run `bus-paper run`).*"
        return {**dict.fromkeys(("runs", "data_checksums", "hardware", "packages"), none),
                "empty_cache": _guarded(lambda: empty_cache_markdown(results))}
    provs = [r["provenance"] for r in recs]
    data_l, data_v = _labels([dict(sorted((p.get("data_checksums") or {}).items()))
                              for p in provs], "D")
    hw_l, hw_v = _labels([_hardware_key(p.get("hardware") or {}) for p in provs], "H")
    hw_full = {_hardware_key(p.get("hardware") or {}): p.get("hardware") or {} for p in provs}
    pk_l, pk_v = _labels([dict(sorted((p.get("packages") or {}).items())) for p in provs], "P")

    # one profile for every chapter (the usual case): said once below the table, not per row,
    # so that the table fits the page column without scrolling sideways (hence also the short
    # "hw" and "pkgs" headers: their values are two characters)
    profiles = sorted({str(p.get("profile")) for p in provs})
    per_row = len(profiles) > 1
    body = []
    for rec, p, dl, hl, pl in zip(recs, provs, data_l, hw_l, pk_l):
        n_results = len(list((results / rec["name"]).glob("*.json")))
        wall = p.get("wall_s")
        est = chapter_estimate(rec)
        body.append((rec["stem"], *([p.get("profile")] if per_row else []),
                     short_commit(p.get("git")), _seeds(results, rec), dl, hl, pl,
                     f"{wall / 60:.1f}" if isinstance(wall, (int, float)) else MISSING,
                     MISSING if est is None else f"{est:.0f}",
                     str(p.get("timestamp") or "")[:16].replace("T", " "), n_results))
    runs = md_table(["chapter", *(["profile"] if per_row else []), "commit", "seeds", "data",
                     "hw", "pkgs", "min", "empty", "finished (UTC)", "files"], body,
                    ["---"] * (6 + per_row) + ["---:", "---:", "---", "---:"])
    total = sum(p.get("wall_s") or 0 for p in provs) / 60
    book_est = book_estimate(recs)
    runs += (f"\n\n{len(recs)} chapters"
             + ("" if per_row else f", all at profile `{profiles[0]}`")
             + f", {total:.1f} minutes of wall time (*min*) in their last executions (with "
             "whatever training was cached at the time). *empty*: the minutes the chapter alone "
             "would take from an empty cache, by its last execution's records: its wall time "
             "plus the training time that the runs it read from the cache recorded when they "
             "were trained (on the hardware of that time; a dash: executed before this was "
             "recorded). *files*: the result files each wrote. *data*, *hw* (hardware) and "
             "*pkgs* (packages) name the sets below.\n\n"
             + (f"**The whole book from an empty cache, estimated** from these records (each of "
                f"the {book_est['runs']} training runs counted once): about "
                f"**{book_est['minutes']:.0f} minutes**"
                + (f" ({book_est['untimed']} cached runs record no time)"
                   if book_est["untimed"] else "")
                + ". An estimate from measured parts, not a measurement; the measurement is "
                "below." if book_est["minutes"] is not None else
                f"The whole book's cost from an empty cache can be estimated from these records "
                f"once every chapter has been executed since they are kept; "
                f"{len(book_est['missing'])} of {len(recs)} have not "
                f"({', '.join(book_est['missing'])})."))

    names = sorted({k for v in data_v for k in v})
    data = md_table(["data set", *(f"D{i + 1}" for i in range(len(data_v)))],
                    [(n, *(f"`{v.get(n, 'absent')}`" for v in data_v)) for n in names]) \
        if names else "*Synthetic phantoms only (no data checksums).*"
    data += "\n\nsha256 of each data set's files as read (`bus_paper.data.checksum`)."

    def gpu(hw: Mapping[str, Any]) -> str:
        cuda = hw.get("cuda")
        return (f"{cuda.get('count', 1)} x {cuda.get('device')} (CUDA {cuda.get('version')})"
                if cuda else "none")

    hws = [hw_full[k] for k in hw_v]
    fields = [("CPU", lambda h: h.get("cpu")),
              ("cores (usable / total)", lambda h: f"{h.get('cores_usable')} / {h.get('cores')}"),
              ("GPU", gpu), ("CPU bf16", _bf16),
              ("torch (threads, CPU capability)",
               lambda h: f"{h.get('torch')} ({h.get('torch_threads', '–')}, "
                         f"{h.get('torch_cpu_capability', '–')})"),
              ("python", lambda h: h.get("python")), ("platform", lambda h: h.get("platform"))]
    hardware = md_table(["", *(f"H{i + 1}" for i in range(len(hws)))],
                        [(label, *(get(h) for h in hws)) for label, get in fields])

    pkgs = sorted({k for v in pk_v for k in v})
    packages = md_table(["package", *(f"P{i + 1}" for i in range(len(pk_v)))],
                        [(n, *(v.get(n) or MISSING for v in pk_v)) for n in pkgs])
    return {"runs": runs, "data_checksums": data, "hardware": hardware, "packages": packages,
            "empty_cache": _guarded(lambda: empty_cache_markdown(results))}


# ----------------------------------------------------------------------------- model card
CARD_CHAPTERS = ("data", "pretraining", "finetuning", "table1", "heatmaps")


def _card_provenances(results: Path) -> dict[str, dict[str, Any]]:
    """The provenance of each chapter behind the card that has run (card order)."""
    out = {}
    for ch in (*CARD_CHAPTERS, "generalisation"):
        path = results / ch / "provenance.json"
        if path.is_file():
            out[ch] = json.loads(path.read_text()).get("provenance", {})
    return out


def _sources(results: Path) -> str:
    lines = []
    provs = _card_provenances(results)
    # chapters executed from an earlier version of their notebook
    older = {r["name"] for r in older_chapters(results.parent / "chapters")}
    for ch in (*CARD_CHAPTERS, "generalisation"):
        if ch not in provs:
            if ch != "generalisation":
                lines.append(f"- `{ch}`: not run yet")
            continue
        p = provs[ch]
        lines.append(f"- `book/results/{ch}/`: profile `{p.get('profile')}`, commit "
                     f"{short_commit(p.get('git'))}, {str(p.get('timestamp', ''))[:10]}"
                     + ("; **executed from an earlier version of its chapter**" if ch in older
                        else ""))
    text = "Generated from these result files (each carries its full provenance):\n\n" + \
        "\n".join(lines)
    if older & set(provs):
        text += ("\n\nWhere a chapter was executed from an earlier version of its notebook, the "
                 "numbers quoted from it below are those of that run, and its wording may predate "
                 "the book's one verdict legend (the chapter's page says so, and how to re-run it).")
    return text


def _model(results: Path) -> str:
    setup = table(results, "pretraining", "setup")
    runs = table(results, "finetuning", "runs")
    prof = load(results, "finetuning", "provenance")
    first = runs[0] if runs else {}
    sel = sorted({r.get("selected epoch") for r in runs if r.get("selected epoch") is not None})
    body = [("profile", f"`{prof['provenance'].get('profile')}`"),
            *((f"pretraining: {r['setting']}", plain(r["value"])) for r in setup),
            ("fine-tuning data sets", ", ".join(sorted({r["dataset"] for r in runs}))),
            ("fine-tuning seeds", ", ".join(str(s) for s in sorted({r["seed"] for r in runs}))),
            ("fine-tuning epochs, batch size", f"{first.get('epochs')}, {first.get('batch size')}"),
            ("epoch kept (best validation AUC)", ", ".join(map(str, sel)) or MISSING),
            ("decision threshold", "chosen on the validation split, per run")]
    return md_table(["setting", "value"], body) + (
        "\n\nThe architecture (a multiscale CoAtNet with top-down feature fusion) is described on "
        "the {doc}`methods` page.")


def _data(results: Path) -> str:
    from ..data.registry import DATASETS
    counts = {r["dataset"]: r for r in table(results, "data", "counts")}
    dups = {r["dataset"]: r for r in table(results, "data", "duplicates_summary")}
    splits = table(results, "data", "split_sizes")
    try:
        pool = next(str(r["value"]) for r in table(results, "pretraining", "setup")
                    if r["setting"] == "pool")
    except (MissingResult, StopIteration):
        pool = ""
    tuned = set(load(results, "finetuning", "provenance").get("datasets") or [])
    body = []
    for name, c in counts.items():
        role = ("fine-tuning and test" if name in tuned else
                "pretraining (labels unused)" if name in pool else "not used for training")
        parts = {r["part"]: r["images"] for r in splits if r["dataset"] == name
                 and r["part"] in ("train", "val", "test")}
        split = " / ".join(str(parts[k]) for k in ("train", "val", "test")) if len(parts) == 3 \
            else MISSING
        d = dups.get(name, {})
        body.append((name, role, c.get("images"), c.get("benign"), c.get("malignant"),
                     c.get("normal"), c.get("patients"), split,
                     f"{d['groups']} ({d['conflicting_groups']})" if d else "none found"))
    # one column per data set (nine attributes side by side would not fit the page column)
    attributes = ["role", "images", "benign", "malignant", "normal", "patients",
                  "train / val / test", "duplicate groups (conflicting labels)"]
    out = md_table(["", *(row[0] for row in body)],
                   [(a, *(row[i + 1] for row in body)) for i, a in enumerate(attributes)])
    out += ("\n\n*Duplicate groups*: groups of identical or near-identical images; in brackets, "
            "those whose images carry conflicting labels.")
    out += "\n\nLicences (`bus_paper.data.registry`):\n\n" + "\n".join(
        f"- **{name}**: {DATASETS[name].licence}" for name in counts if name in DATASETS)
    notes = []
    for name, d in dups.items():
        notes.append(f"- **{name}**: {d.get('identical_pairs')} identical and "
                     f"{d.get('near_pairs')} near-identical image pairs in {d.get('groups')} "
                     f"groups ({d.get('images')} images); {d.get('conflicting_groups')} groups "
                     "carry both labels.")
    for r in splits:
        if str(r["part"]).startswith("excluded"):
            notes.append(f"- **{r['dataset']}**: {r['images']} images {r['part']}.")
    try:
        leaks = [r for r in table(results, "data", "leak_check")
                 if not str(r["split"]).startswith("naive")]
    except MissingResult:
        leaks = []
    if leaks:
        notes.append("- Leak check of the splits used (no duplicate group in two parts): " +
                     ", ".join(f"{r['dataset']} ({r['split']}): {r['result']}" for r in leaks)
                     + ".")
    try:
        for r in table(results, "data", "issues"):
            notes.append(f"- **{r['dataset']}**: {r['count']} x `{r['kind']}` "
                         f"({r['excluded']} excluded).")
    except MissingResult:
        pass
    return out + ("\n\nKnown problems, as measured by the data chapter:\n\n" + "\n".join(notes)
                  if notes else "")


def _within(results: Path) -> str:
    ft = table(results, "finetuning", "metrics")
    datasets = list(dict.fromkeys(r["dataset"] for r in ft))
    metrics = list(dict.fromkeys(r["metric"] for r in ft))
    by = {(r["dataset"], r["metric"]): r for r in ft}
    seeds = sorted({r["seeds"] for r in ft})
    cell = lambda r: MISSING if r is None else ci(r["measured"], r["ci_low"], r["ci_high"]) + (
        f" [{num(r['paper'], 2)}]" if not _missing(r.get("paper")) else "")
    out = ("**The proposed model**, test split of each data set, mean over "
           f"{', '.join(map(str, seeds))} seeds with 95% CI (%); the paper's value in brackets:\n\n")
    out += md_table(["metric", *datasets],
                    [(m, *(cell(by.get((d, m))) for d in datasets)) for m in metrics])
    try:
        t1 = table(results, "table1", "metrics")
    except MissingResult:
        return out
    t1_sets = list(dict.fromkeys(r["dataset"] for r in t1))
    models = list(dict.fromkeys(r["label"] for r in t1))
    auc = {(r["label"], r["dataset"]): ci(r["auc"], r["auc_lo"], r["auc_hi"]) for r in t1}
    out += "\n\n**Test AUC (%) of every Table 1 model**, with 95% CI:\n\n"
    out += md_table(["model", *t1_sets], [(m, *(auc.get((m, d), MISSING) for d in t1_sets))
                                          for m in models])
    return out + ("\n\nEach data set is split into train, validation and test parts of the *same* "
                  "site: these are within-site numbers.")


def _is_calibration(line: str) -> bool:
    return any(w in line for w in ("Calibration", "calibration", "ECE", "Temperature"))


def _generalisation(results: Path, calibration: bool) -> str:
    """The generalisation chapter's results in brief: the train x test AUC matrix per model and
    the leave-one-site-out view (``cross_site``, ``pooled_view``), or the ECE summary
    (``calibration_summary``), each followed by the chapter's verdict lines on it."""
    folder = results / "generalisation"
    what = "calibration" if calibration else "cross-site performance"
    if not folder.is_dir():
        return (f"**Not yet measured.** The {what} of these models has not been measured by this "
                "book yet; the generalisation chapter will write it to "
                "`book/results/generalisation/`, and this card will show it.")
    parts = []
    if not calibration and (folder / "cross_site.json").is_file():
        t = table(results, "generalisation", "cross_site")
        for model in dict.fromkeys(r.get("row") for r in t):
            sub = [r for r in t if r.get("row") == model]
            trains = list(dict.fromkeys(r["train"] for r in sub))
            tests = list(dict.fromkeys(r["test"] for r in sub))
            cell = {(r["train"], r["test"]): ci(r["auc"], r["auc_lo"], r["auc_hi"]) for r in sub}
            parts.append((f"**{model}**: test AUC (%, 95 % CI), fine-tuned on (rows) × tested on "
                          "(columns)\n\n" if model else "")
                         + md_table(["fine-tuned on", *tests],
                                    [(tr, *(cell.get((tr, te), MISSING) for te in tests))
                                     for tr in trains]))
    if not calibration and (folder / "pooled_view.json").is_file():
        v = table(results, "generalisation", "pooled_view")
        parts.append("**Leave one site out** (proposed model, test AUC %; own site: the same "
                     "seed(s) as the pooled model)\n\n" + md_table(
            ["tested on", "own site", "other single sites (mean)", "pooled others",
             "pooled − own site (95 % CI)"],
            [(r["tested on"], r["own site"], r["other single sites (mean)"], r["pooled others"],
              ci(r["pooled − own site"], r["95% CI low"], r["95% CI high"])) for r in v]))
    if calibration and (folder / "calibration_summary.json").is_file():
        c = table(results, "generalisation", "calibration_summary")
        parts.append("**Expected calibration error** (%, mean over cells; temperature fitted on "
                     "the training site's validation split)\n\n" + md_table(
                         ["model", "where", "ECE before", "ECE after", "temperature"],
                         [(r["row"], r["where"], r["ece_before"], r["ece_after"],
                           r["temperature"]) for r in c]))
    if (folder / "verdict.json").is_file():
        lines = [str(x) for x in load(results, "generalisation", "verdict").get("lines", [])]
        lines = [x for x in lines if x.startswith("- ") and _is_calibration(x) == calibration]
        if lines:
            parts.append("\n".join(lines))
    return "\n\n".join(parts) or (f"**Not yet measured**: `book/results/generalisation/` holds "
                                  f"no {what} table.")


def _failure_modes(results: Path) -> str:
    out = []
    try:
        conf = load(results, "finetuning", "confusion")["data"]["matrices"]
    except (MissingResult, KeyError):
        conf = []
    totals: dict[str, list[int]] = {}
    for m in conf:
        (tn, fp), (fn, tp) = m["matrix"]
        t = totals.setdefault(m["dataset"], [0, 0, 0, 0, 0])
        for i, v in enumerate((tn, fp, fn, tp, 1)):
            t[i] += v
    for d, (tn, fp, fn, tp, n) in totals.items():
        out.append(f"- **{d}**, summed over {n} seeds at the validation-chosen threshold: "
                   f"{fn} of {fn + tp} malignant test images called benign "
                   f"(missed: {100 * fn / max(fn + tp, 1):.1f}%), {fp} of {fp + tn} benign "
                   f"images called malignant ({100 * fp / max(fp + tn, 1):.1f}%).")
    try:
        by_class = table(results, "heatmaps", "summary_by_class")
    except MissingResult:
        by_class = []
    body = [(r["model"], r["dataset"], "malignant" if r["label"] == 1 else "benign",
             r["images"], ci(r["energy"], r["energy_lo"], r["energy_hi"]), num(r["chance"]),
             ci(r["hit"], r["hit_lo"], r["hit_hi"]), num(r["empty_cam"]))
            for r in by_class]
    text = "\n".join(out)
    if body:
        text += ("\n\n**Where the heatmaps point** (Grad-CAM on the test images, every seed; "
                 "%, 95% CI): the share of heatmap energy inside the lesion mask against the "
                 "share expected by chance (the lesion's area), the pointing-game hit rate, and "
                 "how often the heatmap was empty:\n\n")
        text += md_table(["model", "data set", "class", "images", "energy in lesion", "chance",
                          "hit rate", "empty heatmap"], body)
    return text or "*Not available: the fine-tuning and heatmap chapters have not run.*"


def _reproduce(results: Path) -> str:
    provs = _card_provenances(results)
    present = list(provs)
    commits = [str((p.get("git") or {}).get("commit") or "unknown") for p in provs.values()]
    profiles = [str(p.get("profile")) for p in provs.values()]
    if not present:
        raise MissingResult("no chapter behind this card has run")
    # the most common (first seen on a tie: the output must not depend on set order)
    commit = max(dict.fromkeys(commits), key=commits.count)
    profile = max(dict.fromkeys(profiles), key=profiles.count)
    return "\n".join([
        (f"The results on this card were produced at commit `{commit[:12]}` with the "
         f"`{profile}` profile. On a machine with the data sets (see the data chapter for where "
         "to get them):"),
        "",
        "```bash",
        f"git checkout {commit[:12]}",
        "make install",
        (f"BUS_PAPER_DATA=/path/to/data .venv/bin/bus-paper run --profile {profile} "
         f"--only {' '.join(present)}"),
        ".venv/bin/bus-paper book",
        "```",
        "",
        ("The data checksums, seeds, hardware and package versions of every run are on the "
         "{doc}`reproducibility` page; each chapter's page has the papermill command for it."),
    ])


# ----------------------------------------------------------------------------- findings
MODEL_NAMES = {"proposed": "the proposed model", "simclr_resnet50": "SimCLR ResNet-50"}
PAPER_NAMES = {"000": "000 (Wang et al., the book's paper)", "001": "001 (Asif et al.)",
               "002": "002 (Guo et al.)", "004": "004 (Bashir & Bhosle)",
               "beyond": "beyond the papers (generalisation)"}
SHORT_PAPER_NAMES = {"000": "000 Wang", "001": "001 Asif", "002": "002 Guo", "004": "004 Bashir",
                     "beyond": "beyond"}


def cross_site_sentence(results: Path) -> str:
    """How each model fares on another site, counted from the generalisation chapter's paired
    transfer differences (tested site: a model fine-tuned elsewhere minus the site's own)."""
    drops = table(results, "generalisation", "transfer_drop")
    out = []
    for model in dict.fromkeys(r["model"] for r in drops):
        d = [r for r in drops if r["model"] == model]
        worse = sum(r["95% CI high"] < 0 for r in d)
        better = sum(r["95% CI low"] > 0 for r in d)
        out.append(f"{MODEL_NAMES.get(model, model)} scores below the tested site's own model "
                   f"beyond the noise in {worse} of {len(d)} transfers, above it in {better}, "
                   f"and {len(d) - worse - better} are not resolved")
    return ("Fine-tuned on one site (BUSI, UDIAT, BUS-BRA, BUS-UCLM) and tested on another, "
            + "; ".join(out) + " (paired test AUC, 95 % CI; the generalisation chapter).")


def _budget(results: Path) -> str:
    from ..config import load_profile
    prof = load(results, "claims", "claims").get("provenance", {}).get("profile", "cpu")
    p, gpu = load_profile(prof), load_profile("gpu")
    return (f"All of it was measured at the `{p.name}` profile: {p.data.image_size} px images, "
            f"{p.model.variant}, {p.pretrain.epochs} self-supervised epochs at batch "
            f"{p.pretrain.batch_size}, {p.finetune.epochs} fine-tuning epochs, "
            f"{len(p.finetune.seeds)} seeds. The papers' budget (the `gpu` profile: "
            f"{gpu.data.image_size} px, {gpu.pretrain.epochs} and {gpu.finetune.epochs} epochs) "
            "has not been run, so every verdict above is a statement about this budget.")


def _ssl_budget(results: Path) -> list[str]:
    """The SSL budget curve (chapter 14) in a sentence per data set: AUC by pretraining epochs,
    measured on the whole data set by grouped cross-validation, and the largest budget's paired
    difference from random initialisation; nothing when the chapter has not run."""
    import pandas as pd
    path = results / "ssl_budget" / "curve.csv"
    if not path.is_file():
        return []
    records = pd.read_csv(path).to_dict("records")
    out = []
    for d in dict.fromkeys(r["dataset"] for r in records):
        curve = sorted((r for r in records if r["dataset"] == d), key=lambda r: r["ssl_epochs"])
        ssl = [r for r in curve if r["init"] == "ssl"]
        random = [r for r in curve if r["init"] == "random"]
        if not ssl or not random:
            continue
        top, base = ssl[-1], random[0]
        aucs = [r["auc"] for r in (base, *ssl)]
        trend = ("the point estimates rise at every budget measured"
                 if all(b > a for a, b in zip(aucs, aucs[1:])) else
                 "the point estimates do not rise at every budget measured")
        steps = [f"{r['ssl_epochs']} epoch{'s' if r['ssl_epochs'] != 1 else ''} "
                 + (ci(r["auc"], r["ci_low"], r["ci_high"]) if r is top else num(r["auc"]))
                 for r in ssl]
        failed = [str(r["ssl_epochs"]) for r in ssl if str(r.get("ssl_learned")) == "False"]
        repeats = f"{top['repeats']} repeat{'s' if top['repeats'] != 1 else ''}"
        out.append(
            f"On {d.upper()} used whole (every image tested once in each of {repeats} of "
            f"grouped {top['folds']}-fold cross-validation; {top['images']} images, "
            f"{top['clusters']} clusters), the proposed model's AUC by self-supervised epochs is: "
            f"random init {ci(base['auc'], base['ci_low'], base['ci_high'])}, "
            f"{', '.join(steps)} % ({trend}). After {top['ssl_epochs']} epochs its paired "
            f"difference from random initialisation is "
            f"{signed_ci(top['diff'], top['diff_low'], top['diff_high'])} points (95 % CI)."
            + (f" The SSL loss failed its learning check at {', '.join(failed)} "
                 f"epoch{'' if failed == ['1'] else 's'}."
               if failed else ""))
    if not out:
        return []
    return ["", "**More pretraining.** " + " ".join(out) + " What the paper's 1000 epochs would "
            "give is not measured here: extrapolating the curve would be a guess. (The "
            "{doc}`SSL budget chapter <chapters/14_ssl_budget>`.)"]


def _findings(results: Path) -> str:
    import pandas as pd

    from ..core.stats import LEGEND
    path = results / "claims" / "claims.csv"
    if not path.is_file():
        raise MissingResult("`book/results/claims/claims.csv` is missing "
                            "(run `bus-paper run --only claims`)")
    t = pd.read_csv(path, dtype={"paper": str})
    head = t[(t["paper"] == "000") & t["claim"].str.startswith("AUC of the proposed model")]
    lines = [f"- **{r['claim'].replace('AUC of the proposed model on ', 'AUC on ')}**: "
             f"{ci(r['measured'], r['ci_low'], r['ci_high'])} % against the paper's "
             f"{r['paper_value']:g}: *{r['verdict']}*." for _, r in head.iterrows()]
    # one row per word, one column per paper: the words are long, the paper names short, so
    # the table fits the page column (papers as rows ran 200 px past it)
    words = [w for w in LEGEND if (t["verdict"] == w).any()]
    groups = list(t.groupby("paper", sort=False))
    counts = md_table(["verdict", *(SHORT_PAPER_NAMES.get(p, p) for p, _ in groups), "all"],
                      [(w, *(int((g["verdict"] == w).sum()) for _, g in groups),
                        int((t["verdict"] == w).sum())) for w in words]
                      + [("claims", *(len(g) for _, g in groups), len(t))])
    try:
        cross = cross_site_sentence(results)
    except MissingResult:
        cross = "Cross-site performance has not been measured yet."
    untested = t["verdict"].eq("not tested at this budget").sum()
    # the checks that failed, without the model names: "ssl loss below chance (DINO-ViT)"
    failed = sorted({c.rsplit(" (", 1)[0] for m in t["mechanism"].dropna()
                     if m.startswith("failed: ") for c in m.removeprefix("failed: ").split("; ")})
    return "\n".join([
        "**The proposed model (paper 000)**, test AUC with its 95 % interval, against the "
        "paper's Table 1:", "", *lines, "",
        f"**Every claim of the four papers and of our own chapter**, by verdict and paper ({len(t)} "
        "claims; *beyond*: our generalisation chapter; the legend and each claim are in the "
        "{doc}`claims chapter <chapters/09_claims>`):", "",
        counts, "",
        f"{untested} claims are *not tested at this budget*: a check they rest on failed, "
        "mostly a model that did not learn (the failed checks: "
        f"{'; '.join(failed) or 'none'}). Such a claim is untested, not refuted.", "",
        f"**Across sites.** {cross}", *_ssl_budget(results), "",
        f"**Budget.** {_budget(results)}", *_older_chapters(results)])


def _older_chapters(results: Path) -> list[str]:
    """A sentence naming the chapters executed from an earlier version of their notebook (their
    numbers stand; their own wording may predate the legend), or nothing."""
    older = [r["stem"] for r in older_chapters(results.parent / "chapters")]
    if not older:
        return []
    chapters, was, its, notebooks, pages_show = (
        ("chapter", "was", "its", "notebook", "page shows") if len(older) == 1
        else ("chapters", "were", "their", "notebooks", "pages show"))
    return ["", f"**Pages from an earlier version.** {len(older)} {chapters} ({', '.join(older)}) "
                f"{was} executed before {its} {notebooks} last changed; the verdicts above are "
                f"computed now from {its} result files, but {its} own {pages_show} the earlier "
                "wording until re-run (each page says so)."]


def intro_blocks(book: Path, chapters: Path) -> dict[str, str]:
    return {"findings": _guarded(lambda: _findings(book / "results"))}


def model_card_blocks(book: Path, chapters: Path) -> dict[str, str]:
    results = book / "results"
    return {"sources": _guarded(lambda: _sources(results)),
            "model": _guarded(lambda: _model(results)),
            "data": _guarded(lambda: _data(results)),
            "within_site": _guarded(lambda: _within(results)),
            "cross_site": _guarded(lambda: _generalisation(results, calibration=False)),
            "deployable": _guarded(lambda: _deployable(results)),
            "calibration": _guarded(lambda: _generalisation(results, calibration=True)),
            "failure_modes": _guarded(lambda: _failure_modes(results)),
            "reproduce": _guarded(lambda: _reproduce(results)),
            "robustness": _guarded(lambda: _robustness(results))}


NAMES = {"busi": "BUSI", "udiat": "UDIAT", "busbra": "BUS-BRA", "busuclm": "BUS-UCLM"}


def _deployable(results: Path) -> str:
    """The deployable (all-site) model: expected AUC on a new site (leave-one-site-out) next to
    its numbers on the sites it was trained on, its threshold's sensitivity and specificity, and
    its calibration (``generalisation/deployable.json``)."""
    d = load(results, "generalisation", "deployable")
    w = d["within"]
    new = d["new_site"]
    mean = d["new_site_mean"]
    seeds = ", ".join(map(str, d["seeds"]))
    metrics = ("auc", "recall", "specificity")

    def spread(m: str) -> str:
        return f"{num(min(r[m] for r in new))}–{num(max(r[m] for r in new))} %"

    lines = [md_table(
        ["", "AUC (%)", "sensitivity (%)", "specificity (%)"],
        [("**expected on a new site** (leave-one-site-out, mean of the held-out sites)",
          *(num(mean[m]) for m in metrics)),
         *((f"held out {NAMES.get(r['site'], r['site'])} ({r['seeds']} seed(s))",
            *(ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for m in metrics)) for r in new),
         (f"the four sites' own test parts ({d['n_test']} images; sites it was trained on)",
          ci(*w["auc"]), ci(*w["recall"]), ci(*w["specificity"]))]),
        "",
        f"On the sites it was trained on, sensitivity and specificity are those of the decision "
        f"threshold ({num(d['threshold'], 3)} on the calibrated probability, chosen on the pooled "
        f"validation parts), on the pooled test parts; seed(s) {seeds}, 95 % intervals over test "
        f"images. A held-out site's are those of the threshold its leave-one-site-out model chose "
        f"the same way on the other sites. Calibration: temperature {num(d['temperature'], 2)}; "
        f"expected calibration error on the pooled test parts {num(d['ece_before'])} % before, "
        f"{num(d['ece_after'])} % after.",
        "",
        f"Expect an AUC near {num(mean['auc'])} % at a new hospital, and anywhere in the held-out "
        f"sites' range ({spread('auc')}): sites differ more than test sets do. The threshold "
        f"moves with the site too: across the held-out sites its sensitivity ranged "
        f"{spread('recall')} and its specificity {spread('specificity')}. At a new site, check "
        "the sensitivity on a few confirmed cases before relying on a decision."]
    return "\n".join(lines)


def _robustness(results: Path) -> str:
    """The card's sentence on other sites and populations, from the same data as the findings."""
    if not (results / "generalisation" / "transfer_drop.json").is_file():
        return "Other sites, devices and populations have not been tested yet."
    return ("Other sites were tested (see *Across sites*). " + cross_site_sentence(results)
            + " The four sites differ in device, hospital and country, so this is the book's "
            "evidence on other populations; nothing was tested prospectively.")


PAGES: dict[str, Callable[[Path, Path], dict[str, str]]] = {
    "intro.md": intro_blocks,
    "model_card.md": model_card_blocks,
    "reproducibility.md": reproducibility_blocks,
}


# ----------------------------------------------------------------------------- refresh
def _write_if_changed(path: Path, new: str, check: bool) -> bool:
    old = path.read_text() if path.exists() else None
    if new == old:
        return False
    if not check:
        atomic_write_text(path, new)
    return True


def refresh(book: str | os.PathLike, chapters: str | os.PathLike | None = None, *,
            check: bool = False, boxes: bool = True) -> list[Path]:
    """Rewrite the generated parts under ``book`` (a ``book/`` folder: pages, ``results/``) from
    ``chapters`` (default ``book/chapters``); returns the files that changed (``check``: that
    would change; nothing is written). Pages that are not there are skipped; ``boxes`` False
    leaves the chapters' rerun boxes alone."""
    book = Path(book)
    chapters = Path(chapters) if chapters else book / "chapters"
    changed = []
    if chapters.is_dir():
        for path in sorted(chapters.glob("*.ipynb")) if boxes else ():
            if refresh_chapter(path, check):
                changed.append(path)
        times = book / "chapter_times.md"
        if (times.exists() or any(chapters.glob("*.ipynb"))) \
                and _write_if_changed(times, times_markdown(chapters), check):
            changed.append(times)
    for page, make in PAGES.items():
        path = book / page
        if not path.is_file():
            continue
        text = path.read_text()
        if _write_if_changed(path, fill_blocks(text, make(book, chapters), page), check):
            changed.append(path)
    return changed


def _cmd_pages(args: argparse.Namespace) -> int:
    from ..paths import project_root
    book = Path(args.book) if args.book else project_root() / "book"
    changed = refresh(book, args.chapters, check=args.check)
    for path in changed:
        print(f"{'stale' if args.check else 'refreshed'}: {path}")
    if args.check and changed:
        print("bus-paper pages: generated parts are stale; run `bus-paper pages`",
              file=sys.stderr)
        return 1
    if not changed:
        print("generated pages are up to date")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pages", help="refresh the generated parts of the book (model card, "
                              "reproducibility page, rerun boxes) without executing anything",
                              description=__doc__.splitlines()[0])
    p.add_argument("--book", help="the book folder (default: book/)")
    p.add_argument("--chapters", help="executed chapters (default: <book>/chapters)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if anything is stale")
    p.set_defaults(func=_cmd_pages)
