"""The chapter runner (bus_paper.book.runner): discovery, content hash, execution and reuse."""

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from bus_paper.book import chapter as book_chapter
from bus_paper.book import runner as pipeline
from bus_paper.cli import main
from bus_paper.paths import PACKAGE_DIR

PARAMS = 'profile = "cpu"\ndata_root = None\nresults_dir = None\nseed = 0\n'


def make_notebook(path: Path, body: str, params: str = PARAMS) -> Path:
    """A source notebook: a tagged parameters cell, then ``body``; no outputs."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_markdown_cell("# A chapter"), nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


WRITE_RESULT = ("import json, pathlib\n"
                "pathlib.Path(results_dir, 'seen.json').write_text(json.dumps({'seed': seed}))\n"
                "print('seed', seed)")


# ----------------------------------------------------------------------------- discovery
def test_discover_and_select(tmp_path):
    for stem in ("02_train", "01_data", "scratch"):
        make_notebook(tmp_path / f"{stem}.ipynb", "pass")
    nbs = pipeline.discover(tmp_path)
    assert [(n.stem, n.name) for n in nbs] == [("01_data", "data"), ("02_train", "train")]
    assert [n.stem for n in pipeline.select(nbs, ["train"])] == ["02_train"]
    assert [n.stem for n in pipeline.select(nbs, ["02_train", "data"])] == ["01_data", "02_train"]
    assert pipeline.select(nbs, None) == nbs
    with pytest.raises(ValueError, match="unknown notebook.*'nope'.*data, train"):
        pipeline.select(nbs, ["nope"])
    with pytest.raises(FileNotFoundError):
        pipeline.discover(tmp_path / "absent")


def test_discover_rejects_two_notebooks_with_one_name(tmp_path):
    make_notebook(tmp_path / "01_data.ipynb", "pass")
    make_notebook(tmp_path / "02_data.ipynb", "pass")
    with pytest.raises(ValueError, match="data"):
        pipeline.discover(tmp_path)


# ----------------------------------------------------------------------------- content hash
def test_hash_tracks_notebook_parameters_and_data(tmp_path):
    nb = make_notebook(tmp_path / "01_x.ipynb", "print(1)")
    params = {"profile": "cpu", "data_root": "/a", "results_dir": "/r/x"}
    data = {"busi": "aa", "udiat": "bb"}
    h, parts = pipeline.content_hash(nb, params, data, code="c")
    assert set(parts) == {"notebook", "parameters", "code", "data"}
    same = lambda p=params, d=data, c="c": pipeline.content_hash(nb, p, d, code=c)[0] == h
    # where the data and the results live changes nothing; what they are does
    assert same(p={**params, "data_root": "/elsewhere", "results_dir": "/tmp/r"})
    assert same(d={"udiat": "bb", "busi": "aa"})
    assert not same(p={**params, "profile": "smoke"})
    assert not same(p={**params, "seed": 1})
    assert not same(d={**data, "busi": "ab"})
    assert not same(c="other code")

    # outputs, execution counts and metadata are not content; sources and tags are
    doc = nbformat.read(nb, as_version=4)
    doc.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    doc.cells[2].execution_count = 5
    doc.metadata["widgets"] = {"x": 1}
    nbformat.write(doc, nb)
    assert same()
    doc.cells[0].metadata["tags"] = []
    nbformat.write(doc, nb)
    assert not same()
    make_notebook(nb, "print(2)")
    assert not same()


def test_code_digest_tracks_python_and_profiles(tmp_path):
    pkg = tmp_path / "bus_paper"
    shutil.copytree(PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    base = pipeline.code_digest(pkg)
    assert pipeline.code_digest(PACKAGE_DIR) == base  # content, not location
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "junk.py").write_text("x")
    (pkg / "notes.txt").write_text("not code")
    assert pipeline.code_digest(pkg) == base
    (pkg / "profiles" / "cpu.toml").write_text((pkg / "profiles" / "cpu.toml").read_text() + "\n")
    changed_profile = pipeline.code_digest(pkg)
    assert changed_profile != base
    (pkg / "data" / "new_module.py").write_text("y = 1\n")
    changed_code = pipeline.code_digest(pkg)
    assert changed_code not in (base, changed_profile)
    # the command line is the top layer: no notebook can import it (import-linter's layers)
    (pkg / "cli" / "train.py").write_text((pkg / "cli" / "train.py").read_text() + "\n# new\n")
    assert pipeline.code_digest(pkg) == changed_code


def test_a_chapter_depends_on_the_code_it_can_import_and_nothing_else(tmp_path):
    """A chapter's code digest covers its notebook's import closure (imports inside functions,
    parents' __init__, whole packages that import by name) and every profile; an edit of a module
    it cannot reach (the model card, paper 004 for paper 000's chapters) leaves it up to date."""
    from bus_paper.book import codedeps

    pkg = tmp_path / "bus_paper"
    shutil.copytree(PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    nb = tmp_path / "ch.ipynb"
    make_notebook(nb, "%matplotlib inline\nfrom bus_paper.papers.p000 import experiments as ex\n"
                      "import bus_paper.book.chapter as chapter")
    files = {rel for rel, _ in codedeps.chapter_inputs(nb, pkg)}
    assert {"__init__.py", "papers/__init__.py", "papers/p000/__init__.py",
            "papers/p000/experiments.py", "book/chapter.py", "profiles/cpu.toml"} <= files
    # the model-family registry imports by name: every module of `models` is in
    assert {p.relative_to(pkg).as_posix() for p in (pkg / "models").glob("*.py")} <= files
    assert not files & {"book/runner.py", "book/pages.py", "papers/p004/features.py"}
    assert not any(f.startswith("cli/") for f in files)

    base = pipeline.code_digest(pkg, notebook=nb)
    assert pipeline.code_digest(PACKAGE_DIR, notebook=nb) == base  # content, not location
    (pkg / "book" / "pages.py").write_text((pkg / "book" / "pages.py").read_text() + "\n# new\n")
    (pkg / "papers" / "p004" / "features.py").write_text("z = 2\n")
    assert pipeline.code_digest(pkg, notebook=nb) == base
    assert pipeline.code_digest(pkg) != pipeline.code_digest(PACKAGE_DIR)  # the whole package
    # an import inside a function of a module it imports counts
    (pkg / "papers" / "p000" / "experiments.py").write_text(
        (pkg / "papers" / "p000" / "experiments.py").read_text()
        + "\n\ndef _late():\n    from ..p004 import features\n    return features\n")
    late = pipeline.code_digest(pkg, notebook=nb)
    assert late != base
    (pkg / "papers" / "p004" / "features.py").write_text("z = 3\n")
    assert pipeline.code_digest(pkg, notebook=nb) != late
    for f in ("papers/p000/experiments.py", "papers/p004/features.py"):  # as they were
        (pkg / f).write_text((PACKAGE_DIR / f).read_text())
    late = pipeline.code_digest(pkg, notebook=nb)
    # profiles: by value, less the paper sections no module of the closure reads
    cpu = pkg / "profiles" / "cpu.toml"
    cpu.write_text(cpu.read_text() + "\n# a comment\n[papers.p999]\nx = 1\n")
    assert pipeline.code_digest(pkg, notebook=nb) == late
    assert "p004" not in codedeps.sections_read(pkg / f for f in files if f.endswith(".py"))
    cpu.write_text(cpu.read_text().replace("[papers.p004]", "[papers.p004]\nnew_setting = 2"))
    assert pipeline.code_digest(pkg, notebook=nb) == late
    p004 = tmp_path / "p004.ipynb"  # a chapter that reads [papers.p004] sees the edit
    make_notebook(p004, "from bus_paper.papers.p004 import run")
    assert pipeline.code_digest(pkg, notebook=p004) != pipeline.code_digest(PACKAGE_DIR,
                                                                           notebook=p004)
    cpu.write_text(cpu.read_text().replace("[papers.p000]", "[papers.p000]\nnew_setting = 3"))
    p000 = pipeline.code_digest(pkg, notebook=nb)
    assert p000 != late
    gpu = pkg / "profiles" / "gpu.toml"
    gpu.write_text(gpu.read_text().replace("[data]", "[data]\nseed_offset = 1", 1))
    assert pipeline.code_digest(pkg, notebook=nb) not in (base, late, p000)


def test_parse_value_types_like_papermill():
    assert [pipeline.parse_value(v) for v in ("3", "0.5", "True", "None", "cpu", "1e-4")] == \
        [3, 0.5, True, None, "cpu", 1e-4]


# ----------------------------------------------------------------------------- output trimming
def test_trim_outputs_caps_text_and_drops_widgets():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="a" * 50),
        nbformat.v4.new_output("display_data", data={
            "text/plain": "short", "text/html": "<p>" + "b" * 50 + "</p>",
            "application/vnd.jupyter.widget-view+json": {"model_id": "m"}}),
        nbformat.v4.new_output("display_data", data={"text/html": "<b>ok</b>",
                                                     "image/png": "iVBOR"}),
    ]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"state": {}}
    assert pipeline.trim_outputs(nb, max_chars=20, max_html=20) == 2
    out = nb.cells[0].outputs
    assert out[0].text.startswith("a" * 20) and "30 characters cut" in out[0].text
    # a dropped table says so, rather than showing a Python repr in its place
    assert set(out[1].data) == {"text/plain"} and "too large for the book" in out[1].data["text/plain"]
    assert out[2].data == {"text/html": "<b>ok</b>", "image/png": "iVBOR"}
    assert "widgets" not in nb.metadata
    # HTML has its own, larger cap: a styled table of fifty rows is kept
    table = nbformat.v4.new_output("display_data", data={"text/html": "<td>x</td>" * 3000,
                                                         "text/plain": "<Styler at 0x1>"})
    nb.cells[0].outputs = [table]
    assert pipeline.trim_outputs(nb) == 0 and "text/html" in table.data


# ----------------------------------------------------------------------------- execution
def test_run_executes_then_reuses(tmp_path, capsys, monkeypatch):
    # a fixed code digest: the package may be edited while tests run (code_digest is tested above)
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    make_notebook(tmp_path / "nb" / "01_tiny.ipynb", WRITE_RESULT)
    kw = {"notebooks_dir": tmp_path / "nb", "out": tmp_path / "book" / "chapters"}

    first = pipeline.run("smoke", **kw)
    assert [o.status for o in first] == ["executed"]
    chapter = tmp_path / "book" / "chapters" / "01_tiny.ipynb"
    executed = nbformat.read(chapter, as_version=4)
    meta = executed.metadata["bus_paper"]
    assert meta["parameters"]["profile"] == "smoke"
    assert meta["provenance"]["profile"] == "smoke" and meta["hash_parts"]["data"] == {
        "synthetic": "phantom"}
    results = tmp_path / "book" / "results" / "tiny"
    assert meta["parameters"]["results_dir"] == str(results)
    assert json.loads((results / "seen.json").read_text()) == {"seed": 0}
    assert "seed 0" in json.dumps(executed.cells[-1].outputs)
    out = capsys.readouterr().out
    assert "01_tiny" in out and "running     (not executed) since" in out   # said at its start

    second = pipeline.run("smoke", **kw)
    assert [o.status for o in second] == ["up to date"]
    plan = pipeline.plan("smoke", **kw)        # what a run would do, executing nothing
    assert [(r.stem, r.state, r.minutes) for r in plan] == [("01_tiny", "up to date", 0.0)]
    assert nbformat.read(chapter, as_version=4).metadata["bus_paper"]["hash"] == meta["hash"]

    # a parameter override changes the hash: re-executed, and the stale result is replaced
    (results / "stale.json").write_text("{}")
    third = pipeline.run("smoke", only=["tiny"], overrides={"seed": 3}, **kw)
    assert [o.status for o in third] == ["executed"]
    assert "running     (parameters) since" in capsys.readouterr().out        # and why
    assert json.loads((results / "seen.json").read_text()) == {"seed": 3}
    assert not (results / "stale.json").exists()

    assert [o.status for o in pipeline.run("smoke", force=True, only=["01_tiny"],
                                           overrides={"seed": 3}, **kw)] == ["executed"]
    assert "(forced)" in capsys.readouterr().out

    # so does the code
    assert [o.status for o in pipeline.run("smoke", overrides={"seed": 3}, **kw)] == ["up to date"]
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v2")
    [row] = pipeline.plan("smoke", overrides={"seed": 3}, **kw)
    assert (row.state, row.why, row.runs, row.missing) == ("stale", ["code"], 0, 0)
    assert "| 01_tiny | stale | code | 0 (0) |" in pipeline.plan_markdown([row])
    capsys.readouterr()
    assert [o.status for o in pipeline.run("smoke", overrides={"seed": 3}, **kw)] == ["executed"]
    assert "running     (code) since" in capsys.readouterr().out

    with pytest.raises(ValueError, match="-p nope"):
        pipeline.run("smoke", overrides={"nope": 1}, **kw)


def test_the_runner_records_the_training_runs_a_chapter_used(tmp_path, monkeypatch):
    """The kernel notes every run whose lock it takes (core.runs ledger); the executed chapter's
    metadata says how many it read from the cache and what they took to train, and its rerun box
    turns that into the chapter's cost from an empty cache."""
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    runs = tmp_path / "runs"
    monkeypatch.setenv("BUS_PAPER_RUNS", str(runs))
    done, fresh = runs / "finetune" / "aaa", runs / "finetune" / "bbb"
    done.mkdir(parents=True)
    (done / "done.json").write_text("{}")
    (done / "result.json").write_text(json.dumps({"seconds": 1800.0}))
    source = (f"from bus_paper.train.engine import run_lock\n"
              f"for d in [{str(done)!r}, {str(fresh)!r}, {str(done)!r}]:\n"
              "    with run_lock(d):\n        pass\n")
    make_notebook(tmp_path / "nb" / "01_tiny.ipynb", source)
    out = tmp_path / "book" / "chapters"
    assert [o.status for o in pipeline.run("smoke", notebooks_dir=tmp_path / "nb", out=out)] == \
        ["executed"]
    executed = nbformat.read(out / "01_tiny.ipynb", as_version=4)
    used = executed.metadata["bus_paper"]["runs_used"]
    assert {k: used[k] for k in ("runs", "cached_runs", "cached_training_s", "untimed")} == \
        {"runs": 2, "cached_runs": 1, "cached_training_s": 1800.0, "untimed": 0}
    assert used["cached"] == {"finetune/aaa": 1800.0} and used["trained"] == ["finetune/bbb"]
    box = "\n".join(c.source for c in executed.cells if "Download or re-run" in c.source)
    assert "From an empty cache it would take about **3" in box and "plus 30.0 min" in box
    assert "the 1 of its 2 training runs" in box
    assert pipeline.LEDGER_ENV not in os.environ      # the runner's own process is left as it was


def test_failing_notebook_fails_the_run_with_its_name(tmp_path, capsys):
    nbdir = tmp_path / "nb"
    make_notebook(nbdir / "01_broken.ipynb", "raise ValueError('boom in the chapter')")
    make_notebook(nbdir / "02_after.ipynb", "print('never')")
    out = tmp_path / "book" / "chapters"
    rc = main(["run", "--profile", "smoke", "--notebooks", str(nbdir), "--out", str(out)])
    assert rc == 1
    captured = capsys.readouterr()
    assert "01_broken" in captured.err and "ValueError: boom in the chapter" in captured.err
    assert "02_after" in captured.out and "skipped" in captured.out
    assert not (out / "01_broken.ipynb").exists()           # not in the book...
    failed = tmp_path / "book" / "failed" / "01_broken.ipynb"
    assert "boom in the chapter" in failed.read_text()      # ...but kept aside
    assert not (out / "02_after.ipynb").exists()

    make_notebook(nbdir / "01_broken.ipynb", "print('fixed')")
    assert main(["run", "--profile", "smoke", "--notebooks", str(nbdir), "--out", str(out)]) == 0
    assert (out / "01_broken.ipynb").exists() and (out / "02_after.ipynb").exists()
    assert not failed.exists()                              # the old failure is gone


# ----------------------------------------------------------------------------- inside a notebook
def test_chapter_under_smoke_uses_a_phantom_and_a_private_results_dir(tmp_path, monkeypatch):
    from bus_paper.provenance import load_result

    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))
    ch = book_chapter.chapter("x", profile="smoke", seed=2)
    assert ch.profile.name == "smoke" and ch.seed == 2
    assert (ch.data_root / "PHANTOM.txt").exists()            # synthetic, never the real data
    assert ch.results_dir == tmp_path / "runs" / "notebook-results" / "x"
    ch.save_result("r", {"v": 1})
    got = load_result(ch.results_dir, "r")
    assert got["v"] == 1 and got["provenance"]["profile"] == "smoke"
    assert got["provenance"]["data_checksums"]["busi"] != "missing"
    assert got["provenance"]["data_checksums"]["mias"] == "missing"

    explicit = book_chapter.chapter("x", profile="smoke", data_root=str(ch.data_root),
                                results_dir=str(tmp_path / "res"))
    assert explicit.data_root == ch.data_root and explicit.results_dir == tmp_path / "res"
    with pytest.raises(FileNotFoundError, match="looked for .* Public source"):
        book_chapter.resolve_data_root("cpu", tmp_path / "absent")

    table = ch.provenance_table([0, 1], **{"encoder key": "abc"})["value"]
    prov = ch.provenance()
    assert table["profile"] == "smoke" and table["seeds"] == "0, 1" and table["encoder key"] == "abc"
    assert table["git commit"].startswith(prov["git"]["commit"][:12])
    assert table["sha256 busi"] == prov["data_checksums"]["busi"][:16]
    assert ch.provenance_table()["value"]["seed"] == 2      # one seed: the chapter's


def test_list_parameters_arrive_as_lists_or_json_text():
    assert book_chapter.as_list('["udiat", "busi"]') == ["udiat", "busi"]
    assert book_chapter.as_list(("busi",)) == ["busi"]
    assert book_chapter.as_list("0, 1") == ["0", "1"] and book_chapter.as_list("lr") == ["lr"]
    assert book_chapter.as_list(3) == [3]
    assert book_chapter.seed_list("[3, 4]", "cpu") == [3, 4]
    assert book_chapter.seed_list(None, "cpu") == list(pipeline.load_profile("cpu").finetune.seeds)


def test_times_page_lists_each_executed_chapter_and_the_total(tmp_path):
    import nbformat

    from bus_paper.book.runner import chapter_times, write_times_page
    for stem, wall in (("01_a", 90.0), ("02_b", 30.0)):
        nb = nbformat.v4.new_notebook()
        nb.metadata["bus_paper"] = {"provenance": {"profile": "cpu", "wall_s": wall,
                                                   "timestamp": "2026-01-01T00:00:00+00:00",
                                                   "git": {"commit": "abcdef1234567890"}}}
        nbformat.write(nb, tmp_path / f"{stem}.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "03_never_run.ipynb")
    assert [r["chapter"] for r in chapter_times(tmp_path)] == ["01_a", "02_b"]
    text = write_times_page(tmp_path, tmp_path / "times.md").read_text()
    assert "| 01_a | cpu | 2026-01-01T00:00:00 | `abcdef123456` | 1.5 |" in text
    assert "**2.0**" in text and "03_never_run" not in text


# ----------------------------------------------------------------------------- transactional runs
# A chapter that fails where a parameter says so: seed "abc" raises after writing a partial file,
# seed 9 kills its kernel, seed 7 kills the runner itself (kill -9 of `bus-paper run` mid-chapter).
FRAGILE = ("import json, os, pathlib\n"
           "out = pathlib.Path(results_dir)\n"
           "(out / 'partial.json').write_text('{}')\n"
           "if seed == 9:\n    os._exit(1)\n"
           "if seed == 7:\n    os.kill(os.getppid(), 9)\n    os._exit(0)\n"
           "assert isinstance(seed, int), f'bad seed {seed!r}'\n"
           "(out / 'seen.json').write_text(json.dumps({'seed': seed}))\n"
           "print('results in', results_dir)")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fragile(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    make_notebook(tmp_path / "nb" / "01_tiny.ipynb", FRAGILE)
    out = tmp_path / "book" / "chapters"
    args = ["run", "--profile", "smoke", "--notebooks", str(tmp_path / "nb"), "--out", str(out)]
    return args, out / "01_tiny.ipynb", tmp_path / "book" / "results" / "tiny", \
        tmp_path / "book" / "failed" / "01_tiny.json"


def test_a_failed_run_keeps_the_chapter_and_its_results_and_is_rerun(fragile, capsys):
    args, chapter, results, record = fragile
    assert main(args) == 0
    before, nb_before = _snapshot(results), chapter.read_bytes()
    assert json.loads(before["seen.json"]) == {"seed": 0}
    # the reader sees the real results folder, not the staging one the notebook wrote into
    assert "staging" not in chapter.read_text()
    cells = nbformat.read(chapter, as_version=4).cells
    injected = next(c for c in cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'results_dir = "{results}"' in injected.source
    assert f"results in {results}" in cells[-1].outputs[0].text

    capsys.readouterr()
    assert main([*args, "-p", "seed", "abc"]) == 1
    assert "bad seed 'abc'" in capsys.readouterr().err
    assert _snapshot(results) == before and chapter.read_bytes() == nb_before
    assert sorted(p.name for p in results.parent.iterdir()) == ["tiny"]  # no staging left
    rec = json.loads(record.read_text())
    assert rec["status"] == "failed" and "bad seed" in rec["error"]
    assert rec["parameters"]["seed"] == "abc" and rec["started"]

    # the next run re-executes (it is not "up to date") and says why; success clears the record
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "01_tiny" in out and "executed" in out and "re-run" in out and "bad seed" in out
    assert not record.exists() and not record.with_suffix(".ipynb").exists()
    assert json.loads((results / "seen.json").read_text()) == {"seed": 0}
    assert main(args) == 0 and "up to date" in capsys.readouterr().out


def test_a_dead_kernel_or_ctrl_c_leaves_the_chapter_as_it_was(fragile, monkeypatch, capsys):
    import papermill
    args, chapter, results, record = fragile
    assert main(args) == 0
    before, nb_before = _snapshot(results), chapter.read_bytes()

    assert main([*args, "-p", "seed", "9"]) == 1                    # the kernel dies
    assert _snapshot(results) == before and chapter.read_bytes() == nb_before
    assert json.loads(record.read_text())["status"] == "failed"

    def interrupted(nb, out, parameters, **kw):                     # Ctrl-C mid-chapter
        Path(kw["cwd"], parameters["results_dir"], "partial.json").write_text("{}")
        raise KeyboardInterrupt
    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    assert main([*args, "--force"]) == 130
    assert _snapshot(results) == before and chapter.read_bytes() == nb_before
    assert sorted(p.name for p in results.parent.iterdir()) == ["tiny"]
    assert json.loads(record.read_text())["status"] == "interrupted"


def test_a_killed_runner_is_repaired_and_rerun(fragile, capsys):
    import subprocess
    import sys
    args, chapter, results, record = fragile
    assert main(args) == 0
    before, nb_before = _snapshot(results), chapter.read_bytes()
    # kill -9 of `bus-paper run` itself while the chapter runs: nothing can clean up
    proc = subprocess.run([sys.executable, "-m", "bus_paper.cli", *args, "-p", "seed", "7"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert (results.parent / ".tiny.staging" / "partial.json").exists()
    assert json.loads(record.read_text())["status"] == "running"
    assert _snapshot(results) == before and chapter.read_bytes() == nb_before

    capsys.readouterr()
    assert main(args) == 0                       # repaired, and re-run although "up to date"
    assert "did not finish" in capsys.readouterr().out
    assert sorted(p.name for p in results.parent.iterdir()) == ["tiny"]
    assert not record.exists() and "partial.json" in _snapshot(results)


@pytest.mark.parametrize("killed_after", ["running", "first rename", "second rename",
                                          "notebook"])
def test_recover_resolves_a_run_killed_between_two_steps(tmp_path, killed_after):
    """The commit is: record "committing", results -> .x.old, .x.staging -> results, write the
    notebook, delete .old, delete the record. A kill anywhere leaves the old state or the new."""
    import hashlib
    results, old = tmp_path / "results" / "x", tmp_path / "results" / ".x.old"
    staging = tmp_path / "results" / ".x.staging"
    target, record = tmp_path / "chapters" / "01_x.ipynb", tmp_path / "failed" / "01_x.json"
    new_nb = b'{"new": 1}\n'
    target.parent.mkdir()
    target.write_bytes(new_nb if killed_after == "notebook" else b'{"old": 1}\n')
    record.parent.mkdir()
    record.write_text(json.dumps({"status": "running" if killed_after == "running" else
                                  "committing", "notebook": hashlib.sha256(new_nb).hexdigest()}))
    where = {"running": [results, staging], "first rename": [old, staging],
             "second rename": [old, results], "notebook": [old, results]}[killed_after]
    for folder, text in zip(where, ["old", "new"]):
        folder.mkdir(parents=True)
        (folder / "r.json").write_text(text)
    pipeline.recover(results, target, record)
    assert sorted(p.name for p in results.parent.iterdir()) == ["x"]
    if killed_after == "notebook":              # committed: finish it
        assert (results / "r.json").read_text() == "new" and not record.exists()
    else:                                       # not committed: roll back, and re-run next time
        assert (results / "r.json").read_text() == "old" and record.exists()


# ----------------------------------------------------------------------------- where -p goes
def test_parameter_overrides_do_not_replace_the_book(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    (repo / "book").mkdir(parents=True)
    monkeypatch.setattr(pipeline, "project_root", lambda: repo)
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    make_notebook(tmp_path / "nb" / "01_tiny.ipynb", WRITE_RESULT)
    args = ["run", "--profile", "smoke", "--notebooks", str(tmp_path / "nb")]

    assert main([*args, "-p", "seed", "1"]) == 0
    assert f"chapters -> {tmp_path / 'runs' / 'chapters'}" in capsys.readouterr().out
    assert (tmp_path / "runs" / "chapters" / "01_tiny.ipynb").exists()
    assert json.loads((tmp_path / "runs" / "results" / "tiny" / "seen.json").read_text()) == {
        "seed": 1}
    assert not (repo / "book" / "chapters").exists() and not (repo / "book" / "results").exists()

    assert main([*args, "-p", "seed", "2", "--update-book"]) == 0   # asked for: the book
    assert json.loads((repo / "book" / "results" / "tiny" / "seen.json").read_text()) == {
        "seed": 2}
    assert main(args) == 0                                          # no -p: the book
    assert json.loads((repo / "book" / "results" / "tiny" / "seen.json").read_text()) == {
        "seed": 0}


def test_a_chapter_reads_its_siblings_beside_it_else_from_the_book(tmp_path, monkeypatch):
    monkeypatch.setattr(book_chapter, "project_root", lambda: tmp_path / "repo")
    mine = tmp_path / "runs" / "notebook-results" / "claims"
    ch = book_chapter.Chapter("claims", pipeline.load_profile("smoke"), tmp_path, mine, 0, ())
    assert ch.sibling_results("table1") == tmp_path / "repo" / "book" / "results" / "table1"
    (mine.parent / "table1").mkdir(parents=True)
    assert ch.sibling_results("table1") == mine.parent / "table1"
    # its own results are this run's, even when `bus-paper run` stages them beside the previous
    # run's folder of the same name (the ablations chapter judged its claims on those)
    staging = tmp_path / "book" / "results" / ".ablations.staging"
    (staging.parent / "ablations").mkdir(parents=True)
    ch = book_chapter.Chapter("ablations", pipeline.load_profile("smoke"), tmp_path, staging, 0, ())
    assert ch.sibling_results("ablations") == staging
    assert ch.sibling_results("finetuning") == tmp_path / "repo" / "book" / "results" / "finetuning"
    assert json.loads((staging / book_chapter.READS_FILE).read_text()) == ["finetuning"]


def test_a_chapter_records_the_commit_it_started_from(tmp_path, monkeypatch):
    """Not the commit at its first save: a chapter may train for an hour first, and the
    developer commit meanwhile."""
    head = {"commit": "a" * 40, "dirty": False}
    monkeypatch.setattr(book_chapter, "provenance", lambda *a, **k: {"git": dict(head)})
    ch = book_chapter.chapter("tiny", "smoke", str(tmp_path), str(tmp_path / "out"))
    head["commit"] = "b" * 40                                        # (an hour later) a commit
    saved = json.loads(ch.save_result("x", {"v": 1}).read_text())
    assert saved["provenance"]["git"]["commit"] == "a" * 40


# ----------------------------------------------------------------------------- atomic writes
def test_result_files_and_pages_are_replaced_atomically(tmp_path, monkeypatch):
    """A writer killed mid-way leaves the previous file whole (and no temp file behind)."""
    import os

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from bus_paper import plotting, provenance
    from bus_paper.book import pages
    path = provenance.atomic_write_text(tmp_path / "a.txt", "one")
    assert path.read_text() == "one" and provenance.atomic_write_bytes(path, b"two") == path
    assert path.read_bytes() == b"two"

    table = pd.DataFrame({"x": [1]})
    fig = plt.figure()
    provenance.save_table(tmp_path, "t", table, {})
    plotting.save_figure(tmp_path, "f", fig, {})
    (tmp_path / "chapter_times.md").write_text("old\n")
    before = _snapshot(tmp_path)

    def killed(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", killed)
    for write in (lambda: provenance.save_table(tmp_path, "t", table.assign(x=2), {}),
                  lambda: plotting.save_figure(tmp_path, "f", fig, {"changed": 1}),
                  lambda: pipeline.write_times_page(tmp_path, tmp_path / "chapter_times.md"),
                  lambda: pages._write_if_changed(tmp_path / "chapter_times.md", "new", False)):
        with pytest.raises(KeyboardInterrupt):
            write()
    plt.close(fig)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- empty cache
def test_the_book_is_timed_from_an_empty_cache_only(tmp_path, monkeypatch, capsys):
    """--from-empty-cache refuses while runs/ or the data cache hold earlier work (the time
    would leave out the training they spare), re-executes every chapter, and records the time
    against the profile's book_minutes for the reproducibility page."""
    from bus_paper.book import pages
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    monkeypatch.setenv("BUS_PAPER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BUS_PAPER_CACHE", str(tmp_path / "cache"))
    make_notebook(tmp_path / "nb" / "01_tiny.ipynb", WRITE_RESULT)
    make_notebook(tmp_path / "nb" / "02_other.ipynb", "pass")
    out = tmp_path / "book" / "chapters"
    kw = {"notebooks_dir": tmp_path / "nb", "out": out}
    assert [o.status for o in pipeline.run("smoke", **kw)] == ["executed", "executed"]
    record = tmp_path / "book" / "results" / "reproducibility" / "empty_cache.json"
    assert not record.exists()
    assert "Not measured by the runner yet" in pages.empty_cache_markdown(tmp_path / "book" /
                                                                          "results")

    (tmp_path / "runs" / "finetune" / "k").mkdir(parents=True)
    (tmp_path / "runs" / "finetune" / "k" / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"runs \(1 file\) hold earlier work"):
        pipeline.run("smoke", from_empty_cache=True, **kw)
    args = ["run", "--profile", "smoke", "--notebooks", str(tmp_path / "nb"), "--out", str(out)]
    assert main([*args, "--from-empty-cache"]) == 2
    assert "needs empty caches" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "runs" / "finetune")
    (tmp_path / "runs" / "chapters").mkdir()   # outputs of earlier -p runs are not a cache
    (tmp_path / "runs" / "chapters" / "01_tiny.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="no --only"):
        pipeline.run("smoke", from_empty_cache=True, only=["tiny"], **kw)

    outcomes = pipeline.run("smoke", from_empty_cache=True, **kw)   # up to date, run all the same
    assert [o.status for o in outcomes] == ["executed", "executed"]
    r = json.loads(record.read_text())
    assert r["profile"] == "smoke" and r["complete"] and r["target_minutes"] == 15
    assert r["within_target"] and 0 < r["minutes"] < 15
    assert [c["chapter"] for c in r["chapters"]] == ["01_tiny", "02_other"]
    assert r["minutes"] >= sum(c["minutes"] for c in r["chapters"])
    assert r["hardware"]["cores"] and "commit" in r["git"]
    # each chapter's rerun box gives its own minutes of that run, once the pages are refreshed
    assert "From an empty cache" not in json.dumps(nbformat.read(out / "01_tiny.ipynb", 4).cells)
    pages.refresh(tmp_path / "book", out)
    [box] = [c.source for c in nbformat.read(out / "01_tiny.ipynb", as_version=4).cells
             if pages.RERUN_ID in c.metadata.get("tags", [])]
    assert (f"From an empty cache it took **{r['chapters'][0]['minutes']:.1f} minutes** at the "
            f"`smoke` profile, of the whole book's {r['minutes']:.1f}") in box
    text = pages.empty_cache_markdown(tmp_path / "book" / "results")
    assert text.startswith("`bus-paper run --profile smoke --from-empty-cache` took **")
    assert "within the profile's target of 15 minutes" in text and "| 02_other | executed |" in text
    r["chapters"][1]["status"], r["complete"], r["within_target"] = "failed", False, False
    record.write_text(json.dumps(r))
    text = pages.empty_cache_markdown(tmp_path / "book" / "results")
    assert "target" not in text and "**Incomplete**: 02_other did not" in text
    r["chapters"][1]["status"], r["complete"], r["minutes"] = "executed", True, 151.0
    record.write_text(json.dumps(r))
    text = pages.empty_cache_markdown(tmp_path / "book" / "results")
    assert "**151.0 minutes**" in text and "over the profile's target of 15 minutes" in text


def test_the_kernel_runs_encrypted_so_no_chapter_prints_a_transport_warning(tmp_path, capfd,
                                                                           monkeypatch):
    """ipykernel >= 7.3 warns on stderr at every start over unencrypted TCP; the runner asks
    jupyter_client for CurveZMQ where both sides offer it, so `make book` prints no such line."""
    if not pipeline.kernel_config():
        pytest.skip("this jupyter_client / pyzmq offers no CurveZMQ: the warning cannot be avoided")
    monkeypatch.setattr(pipeline, "code_digest", lambda **_: "code v1")
    make_notebook(tmp_path / "nb" / "01_tiny.ipynb", WRITE_RESULT)
    outcomes = pipeline.run("smoke", notebooks_dir=tmp_path / "nb", out=tmp_path / "book" / "chapters")
    assert [o.status for o in outcomes] == ["executed"]
    assert "without encryption" not in capfd.readouterr().err


def test_every_source_notebook_validates_with_cell_ids():
    """nbformat 4.5 wants an id on every cell; a cell added by hand without one warns at every
    plan and run, and a future nbformat refuses the notebook."""
    for path in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        raw = json.loads(path.read_text())  # as written: nbformat.read would add missing ids
        missing = [i for i, c in enumerate(raw["cells"]) if "id" not in c]
        assert not missing, f"{path.name}: cells {missing} have no id"
        ids = [c["id"] for c in raw["cells"]]
        assert len(set(ids)) == len(ids), f"{path.name}: a cell id is used twice"
        nbformat.validate(nbformat.from_dict(raw))
