"""The chapter runner (bus_paper.pipeline): discovery, content hash, execution and reuse."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from bus_paper import pipeline
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
    assert pipeline.code_digest(pkg) not in (base, changed_profile)


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
    assert pipeline.trim_outputs(nb, max_chars=20) == 2
    out = nb.cells[0].outputs
    assert out[0].text.startswith("a" * 20) and "30 characters cut" in out[0].text
    assert set(out[1].data) == {"text/plain"}
    assert out[2].data == {"text/html": "<b>ok</b>", "image/png": "iVBOR"}
    assert "widgets" not in nb.metadata


# ----------------------------------------------------------------------------- execution
def test_run_executes_then_reuses(tmp_path, capsys, monkeypatch):
    # a fixed code digest: the package may be edited while tests run (code_digest is tested above)
    monkeypatch.setattr(pipeline, "code_digest", lambda: "code v1")
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
    assert "01_tiny" in capsys.readouterr().out

    second = pipeline.run("smoke", **kw)
    assert [o.status for o in second] == ["up to date"]
    assert nbformat.read(chapter, as_version=4).metadata["bus_paper"]["hash"] == meta["hash"]

    # a parameter override changes the hash: re-executed, and the stale result is replaced
    (results / "stale.json").write_text("{}")
    third = pipeline.run("smoke", only=["tiny"], overrides={"seed": 3}, **kw)
    assert [o.status for o in third] == ["executed"]
    assert json.loads((results / "seen.json").read_text()) == {"seed": 3}
    assert not (results / "stale.json").exists()

    assert [o.status for o in pipeline.run("smoke", force=True, only=["01_tiny"],
                                           overrides={"seed": 3}, **kw)] == ["executed"]

    # so does the code
    assert [o.status for o in pipeline.run("smoke", overrides={"seed": 3}, **kw)] == ["up to date"]
    monkeypatch.setattr(pipeline, "code_digest", lambda: "code v2")
    assert [o.status for o in pipeline.run("smoke", overrides={"seed": 3}, **kw)] == ["executed"]

    with pytest.raises(ValueError, match="-p nope"):
        pipeline.run("smoke", overrides={"nope": 1}, **kw)


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
    ch = pipeline.chapter("x", profile="smoke", seed=2)
    assert ch.profile.name == "smoke" and ch.seed == 2
    assert (ch.data_root / "PHANTOM.txt").exists()            # synthetic, never the real data
    assert ch.results_dir == tmp_path / "runs" / "notebook-results" / "x"
    ch.save_result("r", {"v": 1})
    got = load_result(ch.results_dir, "r")
    assert got["v"] == 1 and got["provenance"]["profile"] == "smoke"
    assert got["provenance"]["data_checksums"]["busi"] != "missing"
    assert got["provenance"]["data_checksums"]["mias"] == "missing"

    explicit = pipeline.chapter("x", profile="smoke", data_root=str(ch.data_root),
                                results_dir=str(tmp_path / "res"))
    assert explicit.data_root == ch.data_root and explicit.results_dir == tmp_path / "res"
    with pytest.raises(FileNotFoundError, match="looked for .* Public source"):
        pipeline.resolve_data_root("cpu", tmp_path / "absent")

    table = ch.provenance_table([0, 1], **{"encoder key": "abc"})["value"]
    prov = ch.provenance()
    assert table["profile"] == "smoke" and table["seeds"] == "0, 1" and table["encoder key"] == "abc"
    assert table["git commit"].startswith(prov["git"]["commit"][:12])
    assert table["sha256 busi"] == prov["data_checksums"]["busi"][:16]
    assert ch.provenance_table()["value"]["seed"] == 2      # one seed: the chapter's


def test_list_parameters_arrive_as_lists_or_json_text():
    assert pipeline.as_list('["udiat", "busi"]') == ["udiat", "busi"]
    assert pipeline.as_list(("busi",)) == ["busi"]
    assert pipeline.as_list("0, 1") == ["0", "1"] and pipeline.as_list("lr") == ["lr"]
    assert pipeline.as_list(3) == [3]
    assert pipeline.seed_list("[3, 4]", "cpu") == [3, 4]
    assert pipeline.seed_list(None, "cpu") == list(pipeline.load_profile("cpu").finetune.seeds)


def test_times_page_lists_each_executed_chapter_and_the_total(tmp_path):
    import nbformat

    from bus_paper.pipeline import chapter_times, write_times_page
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
