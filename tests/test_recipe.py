"""Recipes: every shipped file validates; each kind of bad input gives one clear message."""

import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eldarts_cli.cli import app
from eldarts_cli.config.base import apply_overrides, load_recipe
from eldarts_cli.config.evaluate import EvalRecipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core.errors import RecipeError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()


def search_recipes():
    return sorted(p for p in RECIPES.glob("*.yaml") if p.name.startswith(("search", "quickstart")))


@pytest.mark.parametrize("path", search_recipes(), ids=lambda p: p.name)
def test_search_recipes_validate(path):
    recipe = load_recipe(path, SearchRecipe)
    assert recipe.network.channels % recipe.partial_channels.ratio == 0


def test_paper_settings_in_search_cifar10():
    r = load_recipe(RECIPES / "search-cifar10.yaml", SearchRecipe)
    assert r.search_space.ops == ["skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3"]
    assert (r.network.layers, r.network.nodes, r.network.channels) == (8, 4, 16)
    assert (r.search.epochs, r.data.batch_size, r.partial_channels.ratio) == (50, 256, 4)
    assert (r.optim.lr, r.optim.lr_min, r.optim.momentum, r.optim.weight_decay, r.optim.grad_clip) == (0.1, 0.0, 0.9, 3e-4, 5.0)
    assert (r.entropy.t_init, r.entropy.decay, r.entropy.t_min, r.entropy.weight) == (5.0, 0.95, 0.5, 0.001)
    assert r.edge_coefficients.enabled and r.edge_coefficients.init == "uniform"
    assert r.search.train_portion == 0.5
    # no recipe at all means the paper's settings too (the search batch was DARTS' 64 by default)
    defaults = SearchRecipe().model_dump(exclude={"name": True, "data": {"root"}})
    assert defaults == r.model_dump(exclude={"name": True, "data": {"root"}})


def test_baselines():
    darts = load_recipe(RECIPES / "search-darts-cifar10.yaml", SearchRecipe)
    assert len(darts.search_space.ops) == 8 and darts.partial_channels.ratio == 1
    assert not darts.edge_coefficients.enabled and not darts.entropy.enabled
    pc = load_recipe(RECIPES / "search-pcdarts-cifar10.yaml", SearchRecipe)
    assert len(pc.search_space.ops) == 8 and pc.partial_channels.ratio == 4
    assert pc.edge_coefficients.init == "normal" and not pc.entropy.enabled
    # each baseline anneals as its public train_search.py does: DARTS 0.025 -> 0.001, PC-DARTS 0.1 -> 0.001
    # (PC-DARTS' annealed to 0)
    assert (darts.optim.lr, darts.optim.lr_min) == (0.025, 0.001) and (pc.optim.lr, pc.optim.lr_min) == (0.1, 0.001)


def test_two_op_spaces_validate(tmp_path):
    """The smallest spaces with a choice: two ops, or 'none' and one op (NAS-Bench-201 chooses 'none' too)."""
    path = write(tmp_path, "search_space:\n  ops: [none, nor_conv_3x3]\n  cell: nb201\n")
    assert load_recipe(path, SearchRecipe).search_space.ops == ["none", "nor_conv_3x3"]
    assert load_recipe(path, SearchRecipe, ["search_space.ops=[skip_connect, sep_conv_3x3]",
                                            "search_space.cell=darts"]).search_space.ops == ["skip_connect", "sep_conv_3x3"]


def test_a_run_name_given_with_set_is_the_text_typed():
    """``--set name=0123``: YAML reads digits as a number (0123 as 83, 0x1F as 31), which was refused, and then
    (briefly) renamed the run; the name is the text typed. recipe.yaml quotes a name a recipe would read as a number
    (1e3), so the run resumes from its own recipe."""
    from eldarts_cli.config.base import parse_yaml, recipe_yaml

    for typed in ("123", "0123", "0x1F", "007", "1e3"):
        recipe = load_recipe(RECIPES / "quickstart.yaml", SearchRecipe, [f"name={typed}"])
        assert recipe.name == typed
        assert parse_yaml(recipe_yaml(recipe))["name"] == typed


def test_include_and_overrides(tmp_path):
    jpeg = load_recipe(RECIPES / "search-cifar10-jpeg.yaml", SearchRecipe, ["search.epochs=10", "data.root=x.tar.gz"])
    assert jpeg.data.dataset == "imagefolder" and jpeg.search.epochs == 10 and str(jpeg.data.root) == "x.tar.gz"
    assert jpeg.network.channels == 16  # from the included recipe
    data = apply_overrides({}, ["search_space.ops=[skip_connect, sep_conv_3x3]", "entropy.weight=1e-2"])
    assert data == {"search_space": {"ops": ["skip_connect", "sep_conv_3x3"]}, "entropy": {"weight": 0.01}}
    # a mapping is merged into the section the recipe has (it replaced the section: every other key went back to
    # its default); a value that is not a mapping, or a section the recipe lacks, is set as given
    base = {"search": {"epochs": 5, "warmup_epochs": 2}, "network": {"channels": 8, "layers": 5}, "cost": {"x": 1}}
    data = apply_overrides(base, ["search={epochs: 10}", "network={channels: 4}", "optim={lr: 0.1}", "cost=null"])
    assert data == {"search": {"epochs": 10, "warmup_epochs": 2}, "network": {"channels": 4, "layers": 5},
                    "cost": None, "optim": {"lr": 0.1}}
    assert base["search"] == {"epochs": 5, "warmup_epochs": 2}  # the recipe read is not changed
    merged = load_recipe(RECIPES / "quickstart.yaml", SearchRecipe, ["search={epochs: 12}"])
    assert merged.search.epochs == 12
    assert merged.search.warmup_epochs == load_recipe(RECIPES / "quickstart.yaml", SearchRecipe).search.warmup_epochs


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_errors_name_the_file_and_line_or_option_that_gave_the_value(tmp_path):
    """An included file's bad key is named with that file and line (it was the including file, no line); in an
    ablation, a --set of the ablation's own fields and a value its overrides give every search are named as such
    (they were the ablation file's or the base recipe's line, where nothing is wrong)."""
    (tmp_path / "base.yaml").write_text("seed: 1\nsearch:\n  epochz: 3\n")
    (tmp_path / "main.yaml").write_text("include: [base.yaml]\nname: x\n")
    with pytest.raises(RecipeError) as error:
        load_recipe(tmp_path / "main.yaml", SearchRecipe)
    assert str(error.value).startswith(f"{tmp_path / 'base.yaml'}:3: [search -> epochz] unknown key")
    (tmp_path / "main.yaml").write_text("include: [base.yaml]\nsearch:\n  epochz: 4\n")  # its own key: its line
    with pytest.raises(RecipeError) as error:
        load_recipe(tmp_path / "main.yaml", SearchRecipe)
    assert str(error.value).startswith(f"{tmp_path / 'main.yaml'}:3: [search -> epochz]")
    ablation = ["ablate", str(RECIPES / "ablate-quick.yaml"), "--dry-run"]
    result = runner.invoke(app, [*ablation, "--set", "seeds=[]"])
    assert result.exit_code == 2 and "error: --set seeds: [seeds] give at least one seed" in result.output
    result = runner.invoke(app, [*ablation, "--set", "search.epochz=3"])
    assert result.exit_code == 2 and "search.epochz (the ablation's overrides or --set): [search -> epochz]" in (
        " ".join(result.output.split()))


BILLION_VALUES = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))


@pytest.mark.parametrize(
    "text,overrides,expected",
    [
        ("data:\n  batch_size: 8\n   epochs: 3\n", [], "r.yaml:3"),  # malformed YAML, with line
        # the place where the broken part starts, not where the reader gave up (past the end of this file)
        ('name: "q\nsearch:\n  epochs: 3\n', [], "r.yaml:1:7: malformed YAML: while scanning a quoted scalar that "
                                                "starts here, found unexpected end of stream at line 4, column 1"),
        ("name: x\nsearch\n  epochs: 3\n", [], "r.yaml:2:1: malformed YAML: while scanning a simple key that starts "
                                             "here, could not find expected ':' at line 3, column 9"),
        ("name:x\nsearch:\n  epochs: 3\n", [], "(on this line or one above: a key's colon needs a space after it, "
                                             "'key: value', and the keys of one section the same indentation)"),
        ("name: x\nsearch:\n  epochs: 3\n epochs: 4\n", [], "r.yaml:4:2: malformed YAML: expected <block end>, but "
                                                          "found '<block mapping start>' (this line is indented "
                                                          "otherwise than the keys of its section)"),
        ("a: 1\n\tb: 2\n", [], "r.yaml:2:1: malformed YAML: found character '\\t' that cannot start any token (YAML "
                            "indents with spaces, not tabs)"),
        ("search:\n  epochz: 3\n", [], "did you mean 'epochs'?"),
        ("search:\n  epochz: 3\n", [], "r.yaml:2"),
        ("optim:\n  lr: fast\n", [], "[optim -> lr]"),
        ("optim:\n  lr: -1\n", [], "greater than 0"),
        ("search_space:\n  ops: [skip_connect, sep_conf_3x3]\n", [], "did you mean 'sep_conv_3x3'?"),
        ("partial_channels:\n  ratio: 3\n", [], "does not divide network.channels=16"),
        ("data:\n  dataset: cifar11\n", [], "did you mean 'cifar10'?"),
        ("{}\n", ["search.epochs"], "expected KEY=VALUE"),
        ("{}\n", ["search.epochs=abc"], "[search -> epochs]"),
        ("search:\n  epochs: 5\n", ["search.epochs=abc"], "--set search.epochs: [search -> epochs]"),
        ("- a\n- b\n", [], "must be a mapping"),
        ("include: nowhere.yaml\n", [], "nowhere.yaml does not exist"),
        ("{}\n", ["runtime.device=gpu9"], "unknown device 'gpu9': use auto, cpu, cuda, cuda:N or mps"),  # --dry-run too
        # an empty file is refused (most likely not the file meant); {} runs every default on purpose
        ("", [], "r.yaml is empty: a recipe holds sections (e.g. recipes/search-cifar10.yaml); to run every default "
                 "on purpose, write {}"),
        ("# only comments\n", ["search.epochs=3"], "r.yaml is empty"),
        ("include: e.yaml\n", [], "e.yaml is empty: an included file holds sections"),
        ("search_space:\n  ops: nb201\n", ["network.nodes=2"], "network.nodes=2 must be 3 (NAS-Bench-201's cell"),
        ("runtime:\n  device: cuda:-1\n", [], "unknown device 'cuda:-1'"),
        # one op: its softmax is 1 whatever its weight, nothing to choose (either cell); 'none' alone had its own line
        ("search_space:\n  ops: [sep_conv_3x3]\n", [], "[search_space -> ops] a search space needs at least two ops"),
        ("search_space:\n  ops: [nor_conv_3x3]\n  cell: nb201\n", [], "needs at least two ops to choose among"),
        ("search_space:\n  ops: [none]\n", [], "needs at least one op other than 'none'"),
        # a --set is named, not the file, for a section it adds or a check across fields it changed
        ("search:\n  epochs: 5\n", ["foo.bar=3"], "--set foo.bar: [foo] unknown key"),
        ("edge_coefficients:\n  low: 0.4\n", ["edge_coefficients.low=0.9"], "--set edge_coefficients.low: ["),
        # numbers past float32 (an lr of 1e39 crashed in SGD: "value cannot be converted to type float without
        # overflow") and seeds past what the generators (and the per-epoch seeds made from them) take
        ("{}\n", ["optim.lr=1e39"], "--set optim.lr: [optim -> lr] beyond float32's range"),
        ("data: 3\n", [], "[data] expected a section (keys with values beneath it) (given: 3)"),  # no class name
        ("{}\n", ["arch_optim.weight_decay=1e300"], "[arch_optim -> weight_decay] beyond float32's range"),
        ("{}\n", ["seed=1000000000000000"], "--set seed: [seed] Input should be less than 4294967296"),
        ("seed: -1\n", [], "[seed] Input should be greater than or equal to 0"),
        ("{}\n", ["arch_optim.betas=[0.9]"], "--set arch_optim.betas: [arch_optim -> betas] takes two numbers, Adam's "
                                           "(beta1, beta2), such as [0.5, 0.999]; got 1"),  # "[betas -> 1] Field required"
        # a temperature that could never anneal (T = max(T_min, ...) stays at t_min) was accepted
        ("entropy:\n  t_init: 5\n  t_min: 10\n", [], "r.yaml:1: [entropy] entropy.t_min (10) is above entropy.t_init (5)"),
        ("name: true\n", [], "r.yaml:1: [name] Input should be a valid string (given: True)"),  # not 'True'
        # YAML reads name: 0123 as a number (123; PyYAML's YAML 1.1 read 83): the text is gone, so it is refused
        ("name: 0123\n", [], "r.yaml:1: [name] a run name is text, and YAML read this one as the number 123: quote "
                             "it in the recipe (name: '...'); --set name=... keeps what you type (given: 123)"),
        # YAML 1.1's base 60: 12:30 was the seed 750, silently; read as YAML 1.2 does, it is text, refused
        ("seed: 12:30\n", [], "r.yaml:1: [seed] expected a number, not text (given: '12:30')"),
        ("{}\n", ["search={epochs: 3, epochs: 4}"],
         "--set 'search={epochs: 3, epochs: 4}': not a valid YAML mapping: key 'epochs' is given twice"),
        # a check across sections: where each field it names was given, the file's line or the --set (not a --set
        # it does not name), and those fields in place of "top level"
        ("search:\n  epochs: 5\n", ["search.warmup_epochs=9"],
         "r.yaml:2, --set search.warmup_epochs: [search.epochs, search.warmup_epochs] search.warmup_epochs (9)"),
        # ... the fields on either side of the check, so a --set of either is named (search.epochs was not)
        ("search:\n  epochs: 5\n  warmup_epochs: 2\n", ["search.epochs=1"],
         "r.yaml:3, --set search.epochs: [search.warmup_epochs, search.epochs] search.warmup_epochs (2) leaves no "
         "epoch for architecture updates in search.epochs (1)"),
        ("search:\n  epochs: 3\n  warmup_epochs: 5\n", [],
         "r.yaml:2: [search.epochs, search.warmup_epochs] search.warmup_epochs (5) leaves no epoch"),
        ("{}\n", ["partial_channels.ratio=3", "optim.lr=0.2"],
         "error: --set partial_channels.ratio: [partial_channels.ratio] partial_channels.ratio=3 does not divide"),
        # documents that would not finish loading: a list inside itself (RecursionError), aliases nested nine deep
        # (a billion values: 5 GB in 20 s), lists nested 3,000 deep
        ("x: &a [*a]\n", [], "r.yaml cannot be a recipe: it contains itself (a YAML alias inside its own anchor)"),
        (BILLION_VALUES, [], "r.yaml cannot be a recipe: it expands to more than 100,000 values"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", [], "r.yaml cannot be a recipe: it is nested too deeply"),
        # numbers that took minutes to check (all divisors of the channels listed) or crashed further on
        ("{}\n", ["network.channels=99999999999999999999999"],
         "does not divide network.channels=99999999999999999999999; use a ratio of 1, 3, 9 or "
         "network.channels=99999999999999999999996 or 100000000000000000000000"),
        ("{}\n", ["runtime.threads=100000"], "[runtime -> threads] Input should be less than or equal to 1024"),
        ("{}\n", ["data.image_size=99999999999999999999999"], "[data -> image_size] Input should be less than or "
                                                              "equal to 8192"),
        # a temperature so small that alpha / T overflows: the entropy term was NaN, and written so in metrics.csv
        ("{}\n", ["entropy.t_init=1e-45", "entropy.t_min=1e-45"], "[entropy -> t_init] Input should be greater than "
                                                                   "or equal to 0.001"),
        # data.download of a dataset torchvision does not fetch was ignored without a word
        ("{}\n", ["data.dataset=imagefolder", "data.download=true"], "dataset imagefolder downloads nothing"),
        # batch 1 on small images: BatchNorm of 1x1 maps, a traceback in the first step (evaluate refused it)
        ("{}\n", ["data.batch_size=1"], "[data.batch_size] data.batch_size=1: the supernet normalises each batch"),
        # a typo of epochs ran for ever: the schedule never moved, the eta read 1.7e21 min
        ("{}\n", ["search.epochs=99999999999999999999999"], "[search -> epochs] Input should be less than or equal "
                                                             "to 100000"),
        # a word that YAML reads as a boolean or a number, for a choice of words: "(given: False)" and no more said
        ("{}\n", ["runtime.amp=off"], "[runtime -> amp] expected one of 'auto', 'none', 'bf16', 'fp16', not "
                                      "true/false (YAML reads yes/no/on/off as true/false) (given: False)"),
        ("{}\n", ["derive.method=1"], "[derive -> method] expected one of 'magnitude', 'perturbation', not a number"),
        # a setting that may also be null says so; a list of ops written as text is shown in brackets
        ("{}\n", ["runtime.channels_last=auto"], "[runtime -> channels_last] expected true or false (or null)"),
        ("{}\n", ["search_space.ops=sep_conv_3x3,max_pool_3x3"], "'sep_conv_3x3,max_pool_3x3' is no search space's "
                                                                  "name; a list of ops is written in brackets: "
                                                                  "[sep_conv_3x3, max_pool_3x3]"),
        # 200 nodes (20,300 edges) took a dry run 4 minutes and 8 GB before its answer
        ("{}\n", ["network.nodes=200"], "[network -> nodes] Input should be less than or equal to 32"),
    ],
)
def test_bad_recipes(tmp_path, text, overrides, expected):
    (tmp_path / "e.yaml").write_text("")
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, SearchRecipe, overrides)
    assert expected.removeprefix("error: ") in str(info.value)
    if expected.startswith("error: "):  # at the start of the line
        assert str(info.value).startswith(expected.removeprefix("error: "))


def test_a_huge_data_limit_is_checked_without_drawing_it(tmp_path):
    """``--dry-run`` checks a ``data.limit``'s halves by their sizes: it drew a permutation of the limit (an
    overflow traceback at 1e23, gigabytes at 1e9) where the run itself uses the dataset's size."""
    from eldarts_cli.engines.search import check_search_data

    recipe = load_recipe(write(tmp_path, "data:\n  dataset: fake\n"), SearchRecipe,
                         ["data.limit=99999999999999999999999"])
    check_search_data(recipe)  # no error: the halves are large enough
    with pytest.raises(RecipeError, match="larger than each half of the 300 training images"):
        check_search_data(load_recipe(write(tmp_path, "data:\n  dataset: fake\n"), SearchRecipe, ["data.limit=300"]))


def test_a_dry_run_checks_batches_on_the_datasets_known_size(tmp_path):
    """The dry run checked the batch against data.limit only: ``data.batch_size=2000`` on digits (1,437 training
    images) and ``search.train_portion=0.01`` passed it and were refused at the run's start."""
    from eldarts_cli.config.sections import DataConfig
    from eldarts_cli.data.datasets import DATASETS, load_images
    from eldarts_cli.engines.search import check_search_data

    assert DATASETS.get("digits").train_images == len(load_images(DataConfig(dataset="digits"), "train"))
    digits = write(tmp_path, "data:\n  dataset: digits\n")
    with pytest.raises(RecipeError, match="data.batch_size=2000 is larger than each half of the 1437 training images"):
        check_search_data(load_recipe(digits, SearchRecipe, ["data.batch_size=2000"]))
    with pytest.raises(RecipeError, match=r"smaller part \(14 images\) of the 1437 training images that "
                                          r"search.train_portion=0.01 splits off; lower it, bring"):
        check_search_data(load_recipe(digits, SearchRecipe, ["search.train_portion=0.01"]))
    check_search_data(load_recipe(digits, SearchRecipe, ["data.batch_size=700"]))  # 718 a half
    # a limit above the dataset's size: the dry run says what the run says on loading (it said nothing)
    with pytest.warns(UserWarning, match="data.limit=5000 is more than the 1437 images of the train split"):
        check_search_data(load_recipe(digits, SearchRecipe, ["data.limit=5000"]))
    with pytest.raises(RecipeError, match="each half of the 1000 training images; lower it or raise data.limit"):
        check_search_data(load_recipe(digits, SearchRecipe, ["data.batch_size=700", "data.limit=1000"]))


def test_several_bad_values_are_one_error_line(tmp_path):
    """Every problem of a recipe is named, on one line (they were one line each, under one "error:")."""
    path = write(tmp_path, "search:\n  epochs: -1\nnetwork:\n  channels: 0\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, SearchRecipe, ["optim.lr=-2"])
    text = str(info.value)
    assert "\n" not in text and text.count("; ") >= 2
    assert "r.yaml:2: [search -> epochs]" in text and "r.yaml:4: [network -> channels]" in text
    assert "--set optim.lr: [optim -> lr]" in text


def test_include_cycle_is_named_round_the_loop(tmp_path):
    """a.yaml includes b.yaml includes a.yaml: the error walks the loop back to where it closes."""
    (tmp_path / "a.yaml").write_text("include: b.yaml\nsearch:\n  epochs: 3\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "a.yaml", SearchRecipe)
    assert f"include cycle: a.yaml -> b.yaml -> a.yaml (in {tmp_path.resolve()})" in str(info.value)


def test_include_cycle_in_the_current_folder_names_the_folder(tmp_path, monkeypatch):
    """A cycle of files given by relative names named their folder "(.)"."""
    monkeypatch.chdir(tmp_path)
    Path("a.yaml").write_text("include: a.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(Path("a.yaml"), SearchRecipe)
    assert str(info.value) == f"a.yaml: include cycle: a.yaml -> a.yaml (in {tmp_path.resolve()})"


def test_cli_bad_recipe_is_one_message_no_traceback(tmp_path):
    path = write(tmp_path, "search:\n  epochz: 3\n")
    result = runner.invoke(app, ["search", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert "did you mean 'epochs'" in result.output and "[search -> epochz]" in result.output
    assert "Traceback" not in result.output


def test_cli_usage_errors_are_one_error_line(capsys):
    """click's usage errors (a missing argument, an unknown option or command, a value of the wrong type) end in
    one ``error:`` line and exit 2 from the ``eldarts`` program, as every other error, not click's usage box."""
    for argv, expected in ((["search"], "Missing argument 'RECIPE'"),
                           (["search", "r.yaml", "--bogus"], "No such option: --bogus"),
                           (["serch", "r.yaml"], "No such command 'serch'. Did you mean 'search'?"),
                           (["profile-ops", "--channels", "abc"], "Invalid value for '--channels'")):
        with pytest.raises(SystemExit) as info:
            app(args=argv, prog_name="eldarts")
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert expected in lines[0] and "--help" in lines[0]
    with pytest.raises(SystemExit) as info:  # --version still answers
        app(args=["--version"], prog_name="eldarts")
    assert info.value.code == 0 and capsys.readouterr().out.startswith("eldarts ")


@pytest.mark.parametrize("command", ["search", "evaluate", "ablate", "profile-ops"])
def test_help_answers_to_h_and_shows_no_value_for_flags(command):
    """``-h`` was "No such option"; typer's metavars showed ``<bool>`` for flags, which take no value
    (``--dry-run=yes`` is refused), ``<list[str]>`` for ``--set`` and ``{recipe}`` in the usage line."""
    result = runner.invoke(app, [command, "-h"])  # (no COLUMNS: a console made under it kept 80 columns)
    assert result.exit_code == 0 and "Usage: eldarts " in result.output, result.output
    rows = [line for line in result.output.splitlines() if "--" in line and "--help" not in line]
    assert rows and not any("<bool>" in row or "<list" in row or "<str>" in row for row in rows), result.output
    assert "{recipe}" not in result.output and "[default: (" not in result.output
    assert "KEY=VALUE" in result.output or command == "profile-ops"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_version_into_a_full_disk_is_one_error_line():
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "eldarts_cli", "--version"], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: cannot write the version") and \
        len(done.stderr.splitlines()) == 1, done.stderr


def test_cli_dry_run_names_a_device_this_machine_lacks(tmp_path, monkeypatch):
    """--dry-run plans a run for another machine (sizes for the CPU) but says a run here would be refused."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["search", str(RECIPES / "quickstart.yaml"), "--dry-run", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    assert "warning: device 'cuda' asked for, but CUDA is not available here" in result.output
    assert "a run here would be refused" in result.output


def test_cli_missing_recipe(tmp_path):
    result = runner.invoke(app, ["search", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_dry_run_prints_resolved_recipe_and_size():
    result = runner.invoke(app, ["search", str(RECIPES / "search-cifar10.yaml"), "--dry-run", "--set", "search.epochs=7"])
    assert result.exit_code == 0, result.output
    assert "epochs: 7" in result.output and "warmup_fraction: 0.3" in result.output
    assert "0.174M weights" in result.output  # C=16, 8 cells, ESS, K=4
    # warmup_epochs: null is worked out from warmup_fraction: the dry run says what it comes to (0.3 x 7 = 2)
    assert "warm-up: 2 of 7 epochs without architecture steps (search.warmup_fraction 0.3)" in result.output


def test_random_partial_channels_get_a_warning():
    """sampling=random measured to keep the supernet from learning: a search says so; the shipped recipes don't use it."""
    quiet = runner.invoke(app, ["search", str(RECIPES / "search-cifar10.yaml"), "--dry-run"])
    assert quiet.exit_code == 0, quiet.output
    assert "sampling=random" not in quiet.output and "sampling: fixed" in quiet.output
    loud = runner.invoke(app, ["search", str(RECIPES / "search-cifar10.yaml"), "--dry-run",
                               "--set", "partial_channels.sampling=random"])
    assert loud.exit_code == 0, loud.output
    assert "warning:" in loud.output and "sampling=random" in loud.output and "hardly learns" in loud.output


@pytest.mark.parametrize("command,recipe", [(["search"], "quickstart.yaml"), (["evaluate", "DARTS_V2"], "eval-quick.yaml")])
def test_lr_min_above_lr_is_refused(command, recipe):
    """A cosine schedule from lr to an lr_min above it would raise the learning rate: one error line naming both
    values, exit 2, in search and evaluation recipes alike; lr_min equal to lr (a constant lr) stays allowed."""
    result = runner.invoke(app, [*command, str(RECIPES / recipe), "--dry-run", "--set", "optim.lr=0.01",
                                 "--set", "optim.lr_min=0.02"])
    assert result.exit_code == 2, result.output
    assert "[optim -> lr_min] above lr (0.01)" in result.output and "(given: 0.02)" in result.output
    assert "Traceback" not in result.output
    same = runner.invoke(app, [*command, str(RECIPES / recipe), "--dry-run", "--set", "optim.lr=0.01",
                               "--set", "optim.lr_min=0.01"])
    assert same.exit_code == 0, same.output


@pytest.mark.parametrize("args", [["--version"], ["search", "--help"],
                                  ["search", str(RECIPES / "quickstart.yaml"), "--dry-run"],  # rich's console
                                  ["search", str(RECIPES / "quickstart.yaml"), "--dry-run", "--json"]],  # print_json
                         ids=["version", "help", "dry-run", "json"])
def test_stdout_closed_by_its_reader_ends_quietly(args):
    """``eldarts ... | head -1``: the reader leaves before eldarts is done. It ended with exit 1 and no word (rich's
    and click's broken-pipe exits) or "error: cannot use: Broken pipe"; now quietly, with 141 (128 + SIGPIPE), as a
    shell reports any program its closed pipe stopped. The pipe's read end is closed before eldarts writes."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "eldarts_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert err == ""


def _error_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("error: "))


@pytest.mark.parametrize("args,planned_code", [
    (["recipes/search-cifar10.yaml", "--set", "data.root={tmp}/nowhere"], 0),  # cifar10 not found
    (["recipes/search-cifar10-jpeg.yaml", "--set", "data.root={tmp}/empty"], 0),  # no train/ folder
    (["recipes/quickstart.yaml", "--set", "data.limit=40"], 2),  # a half of 20 images, batch 32
    (["recipes/quickstart.yaml", "--set", "data.limit=1"], 2),  # no halves
    (["recipes/quickstart.yaml", "--out", "{tmp}/full"], 2),  # a folder eldarts did not make, not empty
    (["recipes/quickstart.yaml", "--resume", "{tmp}/empty"], 2),  # no run to resume
], ids=["no-cifar10", "no-train-folder", "limit-below-a-batch", "limit-1", "out-not-empty", "resume-nothing"])
def test_dry_run_says_what_the_run_refuses_at_its_start(tmp_path, args, planned_code):
    """--dry-run printed the plan and exited 0, saying nothing, where the run then refused at once. Now a data.limit
    too small for a batch of each half and an --out it may not use are the run's own error line, exit 2; missing
    data is the run's message as a warning, exit 0, as a device this machine lacks is (a dry run sizes runs for
    the machine that holds the data: README's `--dry-run` on CIFAR-10 recipes). No data loaded, nothing written."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    root = Path(__file__).resolve().parents[1]
    args = [arg.replace("recipes/", f"{root}/recipes/").replace("{tmp}", str(tmp_path)) for arg in args]
    planned = runner.invoke(app, ["search", "--dry-run", *args])
    real = args if "--out" in args or "--resume" in args else [*args, "--out", str(tmp_path / "run")]
    ran = runner.invoke(app, ["search", *real])
    assert ran.exit_code == 2, ran.output
    refused = _error_line(ran.output)
    assert planned.exit_code == planned_code, planned.output
    assert "Traceback" not in planned.output
    if planned_code:
        assert _error_line(planned.output) == refused and "supernet:" not in planned.output
    else:
        said = "warning: " + refused.removeprefix("error: ") + "; a run here would be refused"
        assert said in planned.output.splitlines() and "supernet:" in planned.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]


def test_training_epochs_have_the_same_bound(tmp_path):
    with pytest.raises(RecipeError, match=r"\[train -> epochs\] Input should be less than or equal to 100000"):
        load_recipe(None, EvalRecipe, ["train.epochs=1e9"])
    assert load_recipe(None, EvalRecipe, ["train.epochs=100000"]).train.epochs == 100000


def test_a_recipes_own_ops_over_an_included_space_are_named(tmp_path):
    """README's --emit-space snippet, included in a recipe that sets search_space.ops itself, was silently replaced
    by the recipe's ops: the search ran ops the budget had left out."""
    (tmp_path / "space.yaml").write_text("search_space:\n  ops: [skip_connect, max_pool_3x3]\n")
    (tmp_path / "mine.yaml").write_text("include: [space.yaml]\nsearch_space:\n  ops: ess\n")
    with pytest.warns(UserWarning, match=r"mine.yaml: its search_space.ops ess replaces the \[skip_connect, "
                                         r"max_pool_3x3\] of the file it includes, space.yaml"):
        assert load_recipe(tmp_path / "mine.yaml", SearchRecipe).search_space.ops != ["skip_connect", "max_pool_3x3"]
    (tmp_path / "plain.yaml").write_text("include: [space.yaml]\nsearch:\n  epochs: 3\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_recipe(tmp_path / "plain.yaml", SearchRecipe).search_space.ops == ["skip_connect", "max_pool_3x3"]
    # two included files' ops: the later one's won without a word
    (tmp_path / "other.yaml").write_text("search_space:\n  ops: ess\n")
    (tmp_path / "two.yaml").write_text("include: [space.yaml, other.yaml]\n")
    with pytest.warns(UserWarning, match=r"two.yaml: the included other.yaml's search_space.ops replaces those of a "
                                         r"file included before it \(a later include wins\)"):
        load_recipe(tmp_path / "two.yaml", SearchRecipe)


def test_a_files_typo_is_not_blamed_on_a_set_mapping_merged_into_its_section(tmp_path):
    """``--set 'search={epochs: 4}'`` merges into the file's section; a typo the file has in that section was
    blamed on the --set ("--set search: [search -> warmup_epochz]"), without the file's line."""
    path = write(tmp_path, "search:\n  epochs: 3\n  warmup_epochz: 1\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, SearchRecipe, ["search={epochs: 4}"])
    assert str(info.value).startswith(f"{path}:3: [search -> warmup_epochz] unknown key"), str(info.value)
    with pytest.raises(RecipeError, match=r"^--set search.epochs: \[search -> epochs\] Input should be greater"):
        load_recipe(write(tmp_path, "search:\n  epochs: 3\n"), SearchRecipe, ["search={epochs: -1}"])


def test_a_home_folder_path_is_taken_in_includes_and_the_cost_section(tmp_path, monkeypatch):
    """``include: ~/inc.yaml`` and ``cost.network: ~/ev.yaml`` were "does not exist" (and "a relative path"),
    where data.root takes ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "inc.yaml").write_text("search:\n  epochs: 7\n")
    (tmp_path / "home" / "ev.yaml").write_text("data: {dataset: digits}\n")
    recipe = load_recipe(write(tmp_path, "include: ~/inc.yaml\n"), SearchRecipe,
                         ["cost={metric: macs, network: ~/ev.yaml, target: 0.3}"])
    assert recipe.search.epochs == 7 and recipe.cost.network == tmp_path / "home" / "ev.yaml"


def test_a_training_batch_of_one_image_is_refused():
    """evaluate with data.batch_size=1 passed its dry run, then ended in a traceback ("Expected more than 1 value per
    channel when training") from the auxiliary head's BatchNorm."""
    with pytest.raises(RecipeError, match=r"--set data.batch_size: .*data.batch_size=1: training normalises each "
                                          r"batch \(BatchNorm\), which needs at least 2 images"):
        load_recipe(None, EvalRecipe, ["data.batch_size=1"])
    assert load_recipe(None, EvalRecipe, ["data.batch_size=2"]).data.batch_size == 2


def test_a_set_that_makes_a_section_is_blamed_for_what_it_lacks(tmp_path):
    """``--set cost.weight=2`` on a recipe without a cost section (or with ``cost: null``, as a run's recipe.yaml)
    was blamed on the file: "recipes/quickstart.yaml: [cost -> metric] Field required"."""
    for text in ("search:\n  epochs: 3\n", "cost: null\n"):
        with pytest.raises(RecipeError) as info:
            load_recipe(write(tmp_path, text), SearchRecipe, ["cost.weight=2"])
        assert str(info.value) == "--set cost.weight: [cost] required keys missing: metric, network, target"
    # a misspelt required key: said once, as the typo (beside "[cost -> metric] Field required"); the section's
    # other missing keys are still said, in one message
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, "search:\n  epochs: 3\n"), SearchRecipe, ["cost.metrc=macs"])
    message = str(info.value)
    assert "--set cost.metrc: [cost -> metrc] unknown key (did you mean 'metric'?)" in message, message
    assert "[cost] required keys missing: network, target;" in message and "missing: metric" not in message, message


def test_integers_are_read_as_yaml_1_2_reads_them(tmp_path):
    """PyYAML (YAML 1.1) read search.epochs=010 as the octal 8 and seed: 0123 as 83, silently; a recipe's integers
    are YAML 1.2's: 010 is 10, 0x200 is 512, 1_000 is 1000, and 12:30 is text (refused where a number goes, kept
    as typed in a path)."""
    from eldarts_cli.config.base import parse_yaml

    assert parse_yaml("a: 010\nb: 0123\nc: 0x200\nd: 1_000\ne: -07\nf: 12:30\n") == \
        {"a": 10, "b": 123, "c": 512, "d": 1000, "e": -7, "f": "12:30"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 0123\nsearch:\n  epochs: 010\n")
    loaded = load_recipe(recipe, SearchRecipe, ["data.root=12:30"])
    assert (loaded.seed, loaded.search.epochs, str(loaded.data.root)) == (123, 10, "12:30")


def test_a_set_path_keeps_the_text_typed(tmp_path):
    """--set data.root=2024 was the number 2024 ("not a valid path"), data.root=~ was null; a path's --set is the
    text typed, as name's is."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {dataset: imagefolder}\n")
    for typed in ("2024", "0755", "no", "~", "12:30"):
        assert str(load_recipe(recipe, SearchRecipe, [f"data.root={typed}"]).data.root) == typed


def test_a_path_yaml_reads_as_a_number_is_refused_with_what_to_do(tmp_path):
    """root: 2024 in a recipe file was YAML's number, then "Input is not a valid path (given: 2024)"; root: 0755 lost
    its zero. A path YAML read as a number or a boolean is refused, saying to quote it (a --set keeps its text)."""
    recipe = tmp_path / "r.yaml"
    for value, shown in (("2024", "2024"), ("no", "False"), ("0755", "755")):
        recipe.write_text(f"data: {{dataset: imagefolder, root: {value}}}\n")
        with pytest.raises(RecipeError, match=rf"r.yaml:1: \[data -> root\] a path is text, and YAML read this one as "
                                              rf"{shown}: quote it in the recipe"):
            load_recipe(recipe, SearchRecipe)
    recipe.write_text("data: {dataset: imagefolder, root: '0755'}\n")
    assert str(load_recipe(recipe, SearchRecipe).data.root) == "0755"
