"""``eldarts report`` and the figures ``search`` writes (paper Figures 3-4, Tables 1-3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eldarts_cli.cli import app
from eldarts_cli.core.errors import RunFolderError
from eldarts_cli.models.genotypes import zoo_genotype
from eldarts_cli.runs.figures import plot_cell, write_eval_report, write_search_report
from eldarts_cli.runs.folders import folder_kind
from eldarts_cli.runs.tables import TABLE1_COLUMNS, markdown_table, table1_rows, table2_rows

runner = CliRunner()
FAST = ["--set", "search.epochs=2", "--set", "search.warmup_epochs=1", "--set", "search.max_steps=2",
        "--set", "search.val_batches=1", "--set", "runtime.threads=1"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    from conftest import TINY_SEARCH

    folder = tmp_path_factory.mktemp("report")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_SEARCH)
    run = folder / "run"
    result = runner.invoke(app, ["search", str(recipe), "--out", str(run), *FAST])
    assert result.exit_code == 0, result.output
    return run


def _nonempty_image(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000, path
    if path.suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert b"<svg" in data[:2000]


def test_search_writes_its_figures_at_the_end(search_run):
    figures = search_run / "figures"
    for stem in ("alpha_normal", "alpha_reduce", "cell_normal", "cell_reduce", "curves"):
        for suffix in (".png", ".svg"):
            _nonempty_image(figures / f"{stem}{suffix}")
    assert "published (paper)" in (figures / "table1.md").read_text()


def test_report_on_a_search_run(search_run):
    result = runner.invoke(app, ["report", str(search_run)])
    assert result.exit_code == 0, result.output
    assert "Table 1" in result.output and "published" in result.output and "measured" in result.output
    assert "cell_normal.svg" in result.output
    data = json.loads(runner.invoke(app, ["report", str(search_run), "--json"]).output)
    assert data["kind"] == "search"
    measured = [r for r in data["table1"] if not r["published"]]
    assert len(measured) == 1 and measured[0]["search_cost_unit"] == "CPU-days" and measured[0]["search_cost"] > 0
    assert all(r["source"] == "published (paper)" for r in data["table1"] if r["published"])


def test_report_on_an_ablation(search_run, tmp_path):
    from eldarts_cli.core.io import write_json

    out = tmp_path / "ablation"
    shutil.copytree(search_run, out / "ABC-seed0")
    shutil.rmtree(out / "ABC-seed0" / "figures")
    write_json(out / "ablation.json", {"kind": "ablation", "rows": ["ABC", "X"], "runs": [
        {"id": "ABC-seed0", "row": "ABC", "seed": 0, "A": True, "B": True, "C": True, "status": "finished"},
        {"id": "X-seed0", "row": "X", "seed": 0, "A": False, "B": False, "C": False, "status": "failed"},
    ]})
    (out / "X-seed0").mkdir()
    (out / "X-seed0" / "error.txt").write_text("Traceback ...\nRuntimeError: boom\n")  # statuses come from the folders
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert "Table 3" in result.output and "published" in result.output
    _nonempty_image(out / "figures" / "ablation_error.png")
    _nonempty_image(out / "ABC-seed0" / "figures" / "cell_normal.png")  # figures of runs missing them
    assert "1 failed" in (out / "table3.md").read_text()
    # the measured rows say their data (the paper's are CIFAR-10), and the paper's rows their runs
    assert "search val error on digits" in (out / "table3.md").read_text()
    assert "| 3 (paper) |" in (out / "table3.md").read_text()


def _evaluation_run(run: Path) -> Path:
    """An evaluation run's files as eldarts evaluate writes them (``runs.files.EvalResults``, ``EvalEpoch``)."""
    run.mkdir()
    (run / "genotype.json").write_text(zoo_genotype("PC_DARTS").to_json())
    (run / "results.json").write_text(json.dumps({
        "name": "eval", "genotype": "PC_DARTS", "genotype_cells": {}, "dataset": "cifar10", "network": "cifar",
        "channels": 36, "layers": 20, "input_size": [3, 32, 32], "num_classes": 10, "table": "cifar10",
        "test_top1_error": 2.61, "params_m": 3.63, "macs_m": 557.0, "epochs": 600, "wall_time_s": 1.0,
        "device": "cpu"}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "lr": 0.025, "drop_path": 0.0, "train_loss": 1.0 / e, "train_top1": 50.0 + e,
                    "images_per_s": 100.0, "epoch_time_s": 1.0, "test_loss": 1.0 / e, "test_top1": 60.0 + e})
        + "\n" for e in range(1, 4)))
    return run


def test_report_on_an_evaluation_run(tmp_path):
    run = _evaluation_run(tmp_path / "eval")
    paths = write_eval_report(run)
    for name in ("curves.png", "cell_normal.svg", "cell_reduce.png"):
        _nonempty_image(run / "figures" / name)
    assert run / "figures" / "table1.md" in paths
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "2.61" in result.output and "3.63" in result.output and "published (paper) rows are quoted" in result.output
    # a run on data the paper has no table for: its row alone, and no caption about published rows
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "dataset": "digits", "table": None}))
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0 and "the paper has no table for it" in result.output, result.output
    assert "published" not in result.output


def test_cell_graph_of_a_four_node_cell(tmp_path):
    genotype = zoo_genotype("DARTS_V2")
    paths = plot_cell(genotype.normal, genotype.normal_concat, "Normal cell", tmp_path / "cell")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    for path in paths:
        _nonempty_image(path)
    svg = paths[1].read_text()
    assert "sep_conv_3x3" in svg or "sep" in svg


def test_published_rows_are_marked_and_never_measured(search_run):
    rows = table1_rows([search_run])
    assert sum(not r["published"] for r in rows) == 1
    assert all(r["source"] == "published (paper)" for r in rows if r["published"])
    assert all(r["published"] for r in table2_rows())
    md = markdown_table(TABLE1_COLUMNS, rows)
    assert md.count("published (paper)") == len(rows) - 1 and md.count("| measured |") == 1
    # a search on another dataset says so in Table 1 (CIFAR-10's); the paper's costs read as it prints them
    # ... and where it was a smaller search than the paper's, whose search cost is printed beside the paper's
    assert rows[-1]["architecture"].endswith("search only; on digits, not CIFAR-10; 2 of 50 epochs, 2 of 4 steps "
                                             "an epoch, C=4, 3 cells (paper: C=16, 8), 8x8 images (paper: 32x32), "
                                             "128 of 1,437 images)")
    costs = {r["architecture"]: r["search_cost"] for r in rows if r["published"]}
    assert "2000 GPU-days" in costs.values() and "3150 GPU-days" in costs.values()
    from eldarts_cli.runs.tables import published_rows

    assert all(r["source"] == "published (paper)" for r in published_rows())  # Table 3's, in --json too


# -- bad folders -------------------------------------------------------------


def test_folder_with_no_run(tmp_path):
    with pytest.raises(RunFolderError, match="holds no run"):
        folder_kind(tmp_path)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no run" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_half_written_search_says_how_to_resume(search_run, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(search_run, half)
    (half / "summary.json").unlink()
    files = sorted(p.name for p in half.iterdir())
    result = runner.invoke(app, ["report", str(half)])
    assert result.exit_code == 2
    assert "half-written search" in result.output and "--resume" in result.output
    assert sorted(p.name for p in half.iterdir()) == files  # nothing lost, nothing written
    with pytest.raises(RunFolderError, match="half-written"):
        write_search_report(half)
    assert "no summary.json" in " ".join(result.output.split())
    # a summary.json that says the search has not finished: named so, not "no summary.json"
    summary = json.loads((search_run / "summary.json").read_text())
    (half / "summary.json").write_text(json.dumps({**summary, "finished": False}))
    flat = " ".join(runner.invoke(app, ["report", str(half)]).output.split())
    assert "summary.json not marked finished); finish it first" in flat and "no summary.json" not in flat, flat


def test_report_never_overwrites_a_file_it_did_not_write_in_its_figures(search_run, tmp_path):
    """A file of the user's put in a run's figures/ under a name report writes (table1.md), or one of report's
    edited since, was overwritten without a word in a folder eldarts made; report now refuses before writing
    anything and names it. Files of other names are left alone; eldarts' own are redrawn; a folder made before
    report kept its record (no .eldarts-written.json) has none of its files taken for eldarts'."""
    from eldarts_cli.runs.figures import report_name

    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    figures = run / "figures"
    mine = b"my notes\n"
    (figures / "table1.md").write_bytes(mine)
    (figures / "notes.txt").write_bytes(mine)
    before = {p.name: p.read_bytes() for p in figures.iterdir()}
    flat = " ".join(runner.invoke(app, ["report", str(run)]).output.split())
    assert "error:" in flat and "holds table1.md, which eldarts did not write (or which changed since it did)" in flat
    assert {p.name: p.read_bytes() for p in figures.iterdir()} == before  # nothing written
    (figures / "table1.md").unlink()
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (figures / "table1.md").read_bytes() != mine and (figures / "notes.txt").read_bytes() == mine
    edited = (figures / "curves.svg").read_bytes() + b"<!-- mine -->"
    (figures / "curves.svg").write_bytes(edited)
    assert "curves.svg, which eldarts did not write" in " ".join(runner.invoke(app, ["report", str(run)]).output.split())
    (figures / "curves.svg").unlink()
    # names report does not write are not its business: a backup, notes
    for name in ("curves.v1.png", "cell_notes.txt", "table1.old.md"):
        (figures / name).write_bytes(mine)
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0 and (figures / "curves.svg").exists()
    assert all((figures / name).read_bytes() == mine for name in ("curves.v1.png", "cell_notes.txt", "table1.old.md"))
    # no record (a folder of the user's, or of an earlier version): no file there is taken for eldarts' (they were
    # adopted, and overwritten or deleted)
    (figures / ".eldarts-written.json").unlink()
    (figures / "table1.md").write_bytes(mine)
    flat = " ".join(runner.invoke(app, ["report", str(run)]).output.split())
    assert "error:" in flat and "table1.md" in flat and "curves.png" in flat
    assert (figures / "table1.md").read_bytes() == mine
    for path in figures.iterdir():
        if report_name(path.name):
            path.unlink()
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0 and (figures / "curves.svg").exists()
    # a figure not drawn this time: an earlier report's is removed, a file of the user's of that name is not
    (run / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes()[:30])
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0 and sorted(p.name for p in figures.glob("curves.*")) == ["curves.v1.png"], \
        result.output


def test_figures_a_damaged_log_cannot_give_are_named_not_left_stale(search_run, tmp_path):
    """A truncated metrics.jsonl or alphas.jsonl: report wrote the rest and said "N files written", with the
    curves or heatmaps silently missing (or an earlier report's left in place). It now warns, naming the file,
    and removes the earlier report's figures of those names from its own figures folder."""
    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    assert list((run / "figures").glob("curves.*")) and list((run / "figures").glob("alpha_normal.*"))
    for log, stem, what in (("metrics.jsonl", "curves", "the search curves are not drawn"),
                            ("alphas.jsonl", "alpha_normal", "Figure 3's heatmaps are not drawn")):
        (run / log).write_bytes((run / log).read_bytes()[:30])
        result = runner.invoke(app, ["report", str(run)])
        assert result.exit_code == 0, result.output
        assert f"warning: {run / log} holds no complete epoch: {what}" in " ".join(result.output.split())
        assert not list((run / "figures").glob(f"{stem}.*"))


def test_a_run_in_progress_is_not_sent_to_be_resumed(search_run, tmp_path):
    """report on a search another process is running: it said "half-written ... finish it first: ... --resume",
    a command the running process's lock refuses; it now says the run is in progress."""
    from eldarts_cli.runs.folders import run_lock

    half = tmp_path / "half"
    shutil.copytree(search_run, half)
    (half / "summary.json").unlink()
    early = tmp_path / "early"  # a search still in its epochs: no genotype.json yet
    shutil.copytree(half, early)
    (early / "genotype.json").unlink()
    with run_lock(half), run_lock(early):
        result = runner.invoke(app, ["report", str(half)])
        # evaluate of such a folder said "report it once it has finished" too: not what evaluate's user does next
        evaluating = " ".join(runner.invoke(app, ["evaluate", str(early), "--dry-run"]).output.split())
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "another eldarts process is running now" in flat and "--resume" not in flat
    assert "report it once it has finished" in flat
    assert "another eldarts process is running now" in evaluating and "use its genotype once it has finished" \
        in evaluating, evaluating
    result = runner.invoke(app, ["report", str(half)])  # once it has ended: the resume command
    assert result.exit_code == 2 and "half-written search" in result.output


def test_report_never_overwrites_figures_in_a_folder_eldarts_did_not_mark(search_run, tmp_path):
    """A folder without eldarts' marker (run files copied into someone's folder, or a run from before markers):
    report writes its figures only where none exist; it refuses, naming them, rather than replace files it may
    not have written. A marked run folder's figures are eldarts' own, written again freely."""
    foreign = tmp_path / "foreign"
    shutil.copytree(search_run, foreign)
    (foreign / ".eldarts-run.json").unlink()
    (foreign / "figures" / "table1.md").write_text("USER-TABLE")
    (foreign / "figures" / "cell_normal.png").write_bytes(b"USER-PNG")
    result = runner.invoke(app, ["report", str(foreign)])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "no eldarts marker" in result.output and "figures" in result.output
    assert (foreign / "figures" / "table1.md").read_text() == "USER-TABLE"
    assert (foreign / "figures" / "cell_normal.png").read_bytes() == b"USER-PNG"
    shutil.rmtree(foreign / "figures")  # moved away: report writes a new figures/ there, and again later
    assert runner.invoke(app, ["report", str(foreign)]).exit_code == 0
    _nonempty_image(foreign / "figures" / "cell_normal.png")
    assert runner.invoke(app, ["report", str(foreign)]).exit_code == 0
    assert runner.invoke(app, ["report", str(search_run)]).exit_code == 0  # marked: its own figures, again


@pytest.mark.parametrize("name", ["results.json", "summary.json"])
def test_report_writes_nothing_into_another_tools_folder(tmp_path, name):
    """A folder of another tool with a results.json (or summary.json) of its own: one error line that says so and
    names a few of the missing fields (it listed all 14, as "EvalResults"), and nothing written there (it left a
    figures/ folder with eldarts' report marker)."""
    folder = tmp_path / "othertool"
    folder.mkdir()
    (folder / name).write_text('{"a": 1, "finished": true}')
    result = runner.invoke(app, ["report", str(folder)])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    line = " ".join(result.output.split())
    assert f"is not an eldarts {name} (another tool's, or damaged)" in line and "more" in line
    assert sorted(p.name for p in folder.iterdir()) == [name]


def test_report_refuses_one_search_given_twice(search_run):
    """``report A A`` (or ``A`` and a path that resolves to it) compared a run with itself: one error line, exit
    2, no table; two different runs still compare."""
    for second in (str(search_run), str(search_run / ".." / search_run.name)):
        result = runner.invoke(app, ["report", str(search_run), second])
        assert result.exit_code == 2, result.output
        assert ("is given twice; " if second == str(search_run) else "are the same folder; ") in result.output
        assert "a comparison takes each search run once" in result.output
        assert "searches" not in result.output and "Traceback" not in result.output


def test_the_ablation_figure_has_a_bar_per_swept_value(tmp_path, monkeypatch):
    """A cost sweep's rows share their components' label: the figure drew them as one bar ("ABC") with two error
    caps and put the paper's cross at an empty place; each swept value is now its own bar, labelled with it."""
    from eldarts_cli.runs import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, stem: drawn.append(figure) or [])
    metric = "test error on digits"
    rows = [{"label": "ABC", "published": False, "error_mean": 54.17, "error_std": 1.0, "error_metric": metric,
             "sweep": "cost.weight=0.05"},
            {"label": "ABC", "published": False, "error_mean": 49.72, "error_std": 2.0, "error_metric": metric,
             "sweep": "cost.weight=2"},
            {"label": "ABC", "published": True, "error_mean": 2.45, "error_metric": "test error", "sweep": None}]
    figures.plot_ablation(rows, tmp_path / "ablation_error")
    axes = drawn[0].axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["ABC\ncost.weight=0.05", "ABC\ncost.weight=2"]
    assert [round(bar.get_height(), 2) for bar in axes.patches] == [54.17, 49.72]
    crosses = [c for c in axes.collections if c.get_label().startswith("published")]
    assert crosses and crosses[0].get_offsets()[:, 0].tolist() == [0, 1]  # the paper's ABC under both bars
    assert f"measured ({metric})" in [text.get_text() for text in axes.get_legend().get_texts()]
    # an error bar for each row with a std, none for a row of one seed (a flat cap read as std 0)
    from matplotlib.container import ErrorbarContainer

    def bars(figure) -> list:
        return [len(c.lines[2][0].get_segments()) for c in figure.axes[0].containers
                if isinstance(c, ErrorbarContainer)]

    assert bars(drawn[0]) == [2]
    rows[1]["error_std"] = None
    figures.plot_ablation(rows, tmp_path / "ablation_error")
    assert bars(drawn[1]) == [1]


def test_published_errors_keep_the_papers_digits():
    """Published errors are printed as the paper prints them: Table 1 with two decimals (3.00 ± 0.14) but
    IS-DARTS' 2.4, Table 2 with one (26.0, 8.0), Table 3 row by row (2.6 ± 0.13, 2.64 ± 0.2); they were printed
    with two decimals throughout ("2.40", "2.60 ± 0.13") and Table 2's with as few as needed ("26", "8")."""
    from eldarts_cli.runs.tables import aggregate_row, published_rows, table1_rows, table2_rows, table3_display

    table1 = {r["architecture"].split(" [")[0]: r["test_error"] for r in table1_rows()}
    assert (table1["IS-DARTS"], table1["DARTS_V1"], table1["P-DARTS"]) == ("2.4", "3.00 ± 0.14", "2.50")
    table2 = {r["architecture"].split(" [")[0]: (r["top1_error"], r["top5_error"]) for r in table2_rows()}
    assert table2["NASNet-A"] == ("26.0", "8.4") and table2["AmoebaNet-A"] == ("25.5", "8.0")
    table3 = {r["label"]: r for r in published_rows()}
    assert [table3_display([table3[k]])[0]["error"] for k in ("ABC", "AB", "X")] == \
        ["2.6 ± 0.13", "2.64 ± 0.2", "2.92 ± 0.21"]
    measured = table3_display([aggregate_row("ABC", [{"error": 2.4, "error_metric": "test error"}])])
    assert measured[0]["error"] == "2.40"


def test_a_search_cost_is_printed_in_a_unit_that_shows_it():
    """The search's cost line printed any run under 18 s as "0.0000 CPU-hours = 0.00000 CPU-days": under a minute
    it is in seconds, under a tenth of an hour in minutes, from there in hours and days as before."""
    from eldarts_cli.runs.files import SearchCost
    from eldarts_cli.runs.tables import fmt_search_cost

    def line(hours, unit="CPU-days"):
        return fmt_search_cost(SearchCost(unit=unit, hours=hours, days=hours / 24))

    assert line(1e-5) == "0.036 CPU-seconds" and line(59 / 3600) == "59 CPU-seconds"
    assert line(0.02, "GPU-days") == "1.2 GPU-minutes" and line(0.099) == "5.94 CPU-minutes"
    assert line(2.4137, "GPU-days") == "2.41 GPU-hours = 0.101 GPU-days"
    assert line(1800) == "1800.00 CPU-hours = 75 CPU-days"


def test_two_reports_into_one_folder_at_once_keep_each_others_record(tmp_path):
    """Two processes writing into one folder at once (two ablation shards ending together) each saved its own copy
    of the record of what eldarts wrote, dropping the other's entries: from then on every report refused the
    ablation's own table3 files as "not written by eldarts". The record is changed under a lock now."""
    import threading

    from eldarts_cli.runs.folders import ReportFiles

    def writer(name: str) -> None:
        for i in range(60):
            ReportFiles(tmp_path).write(tmp_path / name, f"{name} {i}".encode())

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("table3.csv", "table3.md")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = ReportFiles(tmp_path)
    assert files.foreign(lambda name: name.startswith("table3")) == []
    assert files.ours(tmp_path / "table3.csv") and files.ours(tmp_path / "table3.md")


def test_agreement_percentages_round_halves_up():
    """format's half-to-even rounding printed 0.625 as 62% and 0.875 as 88%: with 8 kept edges per cell halves are
    common, and read as inconsistent."""
    from eldarts_cli.cli.report import _percent

    assert [_percent(x) for x in (0.625, 0.875, 0.0, 1.0, 0.124)] == ["63%", "88%", "0%", "100%", "12%"]


def test_a_log_that_lost_an_epoch_is_named_by_report(search_run, tmp_path):
    """A metrics.jsonl whose line of an epoch was cut (a kill, a full disk): report drew the curves without it and
    said nothing (a resume warned)."""
    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0][:40] + "\n" + "".join(lines[1:]))  # epoch 1's line cut
    result = runner.invoke(app, ["report", str(run)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and f"warning: {run / 'metrics.jsonl'} lacks epoch 1 of the search's" in flat, flat
    assert "alphas.jsonl lacks" not in flat


@pytest.mark.parametrize("kind, key, value", [("search", "epoch", "x"), ("search", "val_acc", "hello"),
                                              ("search", "entropy_normal", [1, 2]), ("search", "val_acc", {"a": 1}),
                                              ("evaluation", "epoch", "one")])
def test_a_log_value_of_the_wrong_type_is_one_error_line(search_run, tmp_path, kind, key, value):
    """A metrics.jsonl value of the wrong type ("epoch": "x", a list for an entropy) ended report in a TypeError
    from the plot (a null was refused, but only after the figures were drawn): the rows are checked against the
    run's record model first, one error line naming the file and field, nothing written."""
    if kind == "search":
        run = tmp_path / "run"
        shutil.copytree(search_run, run)
        shutil.rmtree(run / "figures")
    else:
        run = _evaluation_run(tmp_path / "eval")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    last = {**json.loads(lines[-1]), key: value}
    lines[-1] = json.dumps(last)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["report", str(run)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert f"metrics.jsonl (epoch {last['epoch']}) is not an eldarts run record" in flat and f"[{key}]" in flat, flat
    assert not (run / "figures").exists()
    if kind == "search":  # compared with a sound run: refused before the sound run's figures are drawn
        sound = tmp_path / "sound"
        shutil.copytree(search_run, sound)
        shutil.rmtree(sound / "figures")
        result = runner.invoke(app, ["report", str(sound), str(run)])
        assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
        assert not (sound / "figures").exists() and not (run / "figures").exists()


def test_an_ablation_chart_it_cannot_draw_now_is_removed_not_left_stale(search_run, tmp_path):
    """An ablation whose runs were removed (or are being redone): Table 3 showed only '-' in its measured rows, but
    the error chart an earlier report drew stayed in figures/, bars and all, without a word; so did the
    accuracy-cost chart of runs no longer finished. Both are removed now, with a warning, as the search report's
    figures are."""
    from eldarts_cli.core.io import write_json
    from eldarts_cli.runs.folders import ReportFiles

    out = tmp_path / "ablation"
    shutil.copytree(search_run, out / "ABC-seed0")
    write_json(out / "ablation.json", {"kind": "ablation", "rows": ["ABC"], "runs": [
        {"id": "ABC-seed0", "row": "ABC", "seed": 0, "A": True, "B": True, "C": True, "status": "finished"}]})
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    figures = out / "figures"
    assert sorted(p.name for p in figures.glob("ablation_error.*")) == ["ablation_error.png", "ablation_error.svg"]
    ReportFiles(figures).write(figures / "accuracy_cost.png", b"an earlier report's chart")
    shutil.rmtree(out / "ABC-seed0")
    result = runner.invoke(app, ["report", str(out)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"warning: {out} has no finished run with an error yet: Table 3's error chart is not drawn" in flat, flat
    assert "the accuracy-cost chart is not drawn" in flat
    assert not list(figures.glob("ablation_error.*")) and not list(figures.glob("accuracy_cost.*"))
    assert ReportFiles.read(figures) == {}


def test_evaluation_figures_it_cannot_draw_are_named_and_cells_come_from_results(search_run, tmp_path):
    """An evaluation's curves (a metrics.jsonl cut or missing) and cells (no genotype.json) were left out without a
    word, and an earlier report's stood in their place; a search warned. The evaluation warns now, removes the
    stale figures, and draws the cells from results.json's copy of them; a missing log is called missing."""
    run = _evaluation_run(tmp_path / "eval")
    write_eval_report(run)
    figures = run / "figures"
    assert (figures / "curves.png").exists() and (figures / "cell_normal.png").exists()
    (run / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes()[:30])
    (run / "genotype.json").unlink()
    results = json.loads((run / "results.json").read_text())
    cells = zoo_genotype("DARTS_V2").model_dump(mode="json", exclude={"name"})  # as evaluate writes genotype_cells
    (run / "results.json").write_text(json.dumps({**results, "genotype_cells": cells}))
    result = runner.invoke(app, ["report", str(run)])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"warning: {run / 'metrics.jsonl'} holds no complete epoch: the training curves are not drawn" in flat
    assert not list(figures.glob("curves.*")) and str(figures / "cell_normal.png") in flat
    (run / "metrics.jsonl").unlink()
    (run / "results.json").write_text(json.dumps({**results, "genotype_cells": {}}))
    flat = " ".join(runner.invoke(app, ["report", str(run)]).output.split())
    assert f"warning: {run / 'metrics.jsonl'} is missing: the training curves are not drawn" in flat, flat
    assert f"{run / 'genotype.json'} is missing, and the copy of the cells in {run / 'results.json'} is not a " \
        "genotype" in flat and "the cell figures are not drawn" in flat
    assert sorted(p.name for p in figures.iterdir() if not p.name.startswith(".")) == ["table1.md"]
    search = tmp_path / "search"
    shutil.copytree(search_run, search)
    (search / "metrics.jsonl").unlink()
    flat = " ".join(runner.invoke(app, ["report", str(search)]).output.split())
    assert f"warning: {search / 'metrics.jsonl'} is missing: the search curves are not drawn" in flat, flat


def test_report_json_holds_numbers_not_display_strings(search_run, tmp_path):
    """``report RUN --json`` gave a search's and an evaluation's Table rows as the strings it prints ("91.94" for
    91.9444, "4" ops, "-" for none), where Table 3's and the comparison's were numbers: the JSON holds the numbers
    now (null for none), the console and Markdown the strings."""
    run = _evaluation_run(tmp_path / "eval")
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "test_top1_error": 2.6149, "search_cost_days": 0.0123,
                                                  "search_cost_unit": "CPU-days", "search_num_ops": 4}))
    data = json.loads(runner.invoke(app, ["report", str(run), "--json"]).output)
    mine = data["table"][-1]
    assert (mine["test_error"], mine["params_m"], mine["num_ops"]) == (2.6149, 3.63, 4)
    assert (mine["search_cost"], mine["search_cost_unit"], mine["test_error_std"]) == (0.0123, "CPU-days", None)
    darts = next(r for r in data["table"] if r["architecture"].startswith("DARTS_V1"))
    assert (darts["test_error"], darts["test_error_std"], darts["search_cost"]) == (3.0, 0.14, 1.5)
    assert darts["published"] and darts["source"] == "published (paper)"
    assert "| 2.61 |" in (run / "figures" / "table1.md").read_text()
    search = json.loads(runner.invoke(app, ["report", str(search_run), "--json"]).output)["table1"][-1]
    assert search["test_error"] is None and search["params_m"] is None and isinstance(search["num_ops"], int)
    assert "values" not in mine and "values" not in search


def test_a_file_named_figures_is_named_not_a_fault(search_run, tmp_path):
    """A file of the user's named ``figures`` where report makes its folder: "cannot use RUN/figures: File exists",
    exit 1 (an ablation's tables written first). One error line now, exit 2, before anything is written; the file
    stays as it was."""
    from eldarts_cli.core.io import write_json
    from eldarts_cli.runs.folders import mark_run_dir

    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    shutil.rmtree(run / "figures")
    ablation = tmp_path / "ablation"
    shutil.copytree(search_run, ablation / "ABC-seed0")
    write_json(ablation / "ablation.json", {"kind": "ablation", "rows": ["ABC"], "runs": [
        {"id": "ABC-seed0", "row": "ABC", "seed": 0, "A": True, "B": True, "C": True, "status": "finished"}]})
    mark_run_dir(ablation, "ablation")  # (as eldarts ablate marks it)
    for folder, given in ((run, [run]), (run, [run, search_run]), (ablation, [ablation])):
        (folder / "figures").write_text("mine\n")
        result = runner.invoke(app, ["report", *map(str, given)])
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
        assert f"{folder / 'figures'} is a file, not a folder" in flat, flat
        assert (folder / "figures").read_text() == "mine\n"
    assert not (ablation / "table3.md").exists()


def test_a_searchs_differences_from_the_papers_are_what_ran(search_run, tmp_path):
    """search.max_steps was named as the steps an epoch ran even where it cut nothing ("1000 steps an epoch" for 4);
    a run folder without its recipe.yaml read nearer the paper than it was (no data, no supernet size), its summary
    holding them."""
    import shutil

    from eldarts_cli.runs.tables import search_differences

    copy = tmp_path / "copy"
    shutil.copytree(search_run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["steps_per_epoch"] < summary["steps_in_epoch"]  # (FAST's max_steps cuts the epoch)
    assert f"{summary['steps_per_epoch']} of {summary['steps_in_epoch']} steps an epoch" in search_differences(copy)
    (copy / "summary.json").write_text(json.dumps({**summary, "steps_per_epoch": summary["steps_in_epoch"]}))
    assert not any("steps an epoch" in note for note in search_differences(copy))
    with_recipe = table1_rows([copy])[-1]["architecture"]
    (copy / "recipe.yaml").unlink()
    assert table1_rows([copy])[-1]["architecture"] == with_recipe
    assert "on digits, not CIFAR-10" in with_recipe and "C=4, 3 cells (paper: C=16, 8)" in with_recipe
    # Table 3's error label of CIFAR-10 as image files says so (it read as plain CIFAR-10, beside the paper's rows)
    from eldarts_cli.runs.tables import CIFAR10_CLASSES, _on

    assert _on("search val error", "imagefolder", CIFAR10_CLASSES, 50_000) == \
        "search val error on CIFAR-10 as image files"
    assert _on("test error", "imagefolder", ["a", "b"], 40) == "test error on imagefolder"
