"""``eldarts profile-ops`` and the ``profile`` library (paper 2.2.1, Figure 1).

Measurements run on CPU at toy sizes; selection is tested on a hand-made
profile whose numbers are known, so it does not depend on timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from eldarts_cli.cli import app
from eldarts_cli.core.threads import available_cores
from eldarts_cli.models.ops import OPS
from eldarts_cli.models.spaces import DARTS_SPACE, ESS_SPACE
from eldarts_cli.engines.profile import (
    Budgets,
    Environment,
    OpProfile,
    ProfileError,
    ProfileResult,
    ProfileSettings,
    Timing,
    emit_space_yaml,
    load_profile,
    plot_latency,
    profile_ops,
    save_profile,
    select_space,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = dict(channels=4, resolution=8, batch=2, repeats=2, warmup=1, device="cpu", threads=1)
runner = CliRunner()


@pytest.fixture(scope="module")
def measured() -> ProfileResult:
    return profile_ops(**TINY, backward=True)


def test_every_registered_op_profiles_on_cpu(measured):
    assert measured.names() == OPS.names()
    assert set(DARTS_SPACE) <= set(measured.names())
    for item in measured.ops:
        assert item.forward.repeats == 2 and item.forward.median_ms >= 0
        assert item.forward.min_ms <= item.forward.q1_ms <= item.forward.median_ms <= item.forward.q3_ms <= item.forward.max_ms
        assert item.forward_backward is not None
        assert item.output_shape == [2, 4, 8, 8]
    assert measured.environment.device == "cpu" and measured.environment.threads == 1
    assert measured.op("sep_conv_3x3").params == sum(p.numel() for p in OPS.get("sep_conv_3x3").build(4, 1, True).parameters())
    assert measured.op("sep_conv_5x5").macs > measured.op("sep_conv_3x3").macs > 0
    assert measured.op("skip_connect").macs == 0 and measured.op("max_pool_3x3").params == 0
    assert measured.relative_latency("skip_connect") == pytest.approx(1.0)
    assert measured.relative_latency("none") is None
    assert measured.op("none").zero


def test_stride_two_and_thread_count_restored():
    before = torch.get_num_threads()
    result = profile_ops(["skip_connect", "sep_conv_3x3"], **{**TINY, "stride": 2})
    assert torch.get_num_threads() == before
    assert result.op("skip_connect").output_shape == [2, 4, 4, 4]
    assert result.op("skip_connect").params > 0  # FactorizedReduce at stride 2


def test_ops_are_timed_in_the_layout_and_dtype_eldarts_trains_in(monkeypatch):
    """Ops were timed on NCHW float32 input on every device, a form eldarts never runs (in float32 at 64 x 16 x
    32x32 on one thread, average pooling took 6.5 ms NCHW against 1.5 NHWC): they are timed channels_last, in the
    dtype an evaluation network trains in on the device unless given, and the profile says which."""
    import eldarts_cli.engines.profile as profile
    from eldarts_cli.core.device import cpu_has_native_bf16

    seen = []

    class Probe(torch.nn.Module):  # what the timed calls hand an op
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            seen.append((x.is_contiguous(memory_format=torch.channels_last), y.dtype))
            return y

    monkeypatch.setattr(profile, "_build", lambda name, channels, stride: Probe())
    result = profile_ops(["sep_conv_3x3"], **TINY, dtype="bfloat16", backward=True)
    assert (result.settings.dtype, result.settings.channels_last) == ("bfloat16", True)
    assert seen[-1] == (True, torch.bfloat16)
    result = profile_ops(["sep_conv_3x3"], **TINY)
    native = cpu_has_native_bf16()
    assert (result.settings.dtype, result.settings.channels_last) == ("bfloat16" if native else "float32", True)
    assert seen[-1] == (True, torch.bfloat16 if native else torch.float32)
    with pytest.raises(ProfileError, match="float16 autocast does not run on the CPU"):
        profile_ops(["sep_conv_3x3"], **TINY, dtype="float16")


def test_cli_says_the_layout_and_dtype_and_reads_older_profiles(tmp_path):
    """The caption names the dtype and memory format; a profile written before they were recorded (all float32,
    NCHW) is still read, and says so."""
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["profile-ops", *CLI_TINY, "--ops", "skip_connect,max_pool_3x3", "--dtype",
                                 "float32", "--out", str(out)])
    # (no COLUMNS: a console first made under it keeps its width for the tests that follow in the process)
    assert result.exit_code == 0, result.output
    assert "float32, channels_last=True" in " ".join(result.stdout.split())
    data = json.loads(out.read_text())
    assert (data["settings"]["dtype"], data["settings"]["channels_last"]) == ("float32", True)
    del data["settings"]["dtype"], data["settings"]["channels_last"]
    out.write_text(json.dumps(data))
    again = runner.invoke(app, ["profile-ops", "--from", str(out)])
    assert again.exit_code == 0, again.output
    assert "float32, channels_last=False" in " ".join(again.stdout.split())


def test_progress_callback_sees_every_op():
    calls = []
    profile_ops(["none", "skip_connect"], **TINY, progress=lambda op, done, total: calls.append((op, done, total)))
    assert calls == [("none", 0, 2), ("skip_connect", 1, 2), ("", 2, 2)]


def test_json_round_trips(measured, tmp_path):
    path = tmp_path / "nested" / "profile.json"
    save_profile(measured, path)
    assert load_profile(path) == measured
    assert json.loads(path.read_text())["format"] == "eldarts-op-profile"


def test_bad_profile_file_is_a_clear_error(tmp_path):
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "eldarts-op-profile", "ops": []}')
    with pytest.raises(ProfileError, match="not an eldarts op profile"):
        load_profile(bad)
    empty = tmp_path / "empty.json"  # a profile of no op (it crashed the table: "max() arg is an empty sequence")
    empty.write_text(known_profile().model_copy(update={"ops": []}).model_dump_json())
    with pytest.raises(ProfileError, match=r"not an eldarts op profile: \[ops\] List should have at least 1 item"):
        load_profile(empty)
    negative = json.loads(known_profile().model_dump_json())  # a time below zero (edited by hand) is no time
    negative["ops"][0]["forward"]["median_ms"] = -0.5
    bad.write_text(json.dumps(negative))
    with pytest.raises(ProfileError, match=r"\[ops -> 0 -> forward -> median_ms\] Input should be greater than"):
        load_profile(bad)
    # quartiles out of order (a negative IQR in the table) and a thread count below one: damaged, refused
    for where, field, value, message in (
            ("forward", "q1_ms", 9.0, r"\[ops -> 0 -> forward\] q1_ms 9 is above median_ms 0.01: a timing goes "
                                     r"min_ms <= q1_ms <= median_ms <= q3_ms <= max_ms"),
            ("forward", "q3_ms", 0.0, r"\[ops -> 0 -> forward\] median_ms 0.01 is above q3_ms 0"),
            ("environment", "threads", -3, r"\[environment -> threads\] Input should be greater than 0")):
        damaged = json.loads(known_profile().model_dump_json())
        (damaged["ops"][0] if where == "forward" else damaged)[where][field] = value
        bad.write_text(json.dumps(damaged))
        with pytest.raises(ProfileError, match=r"not an eldarts op profile: " + message):
            load_profile(bad)
    recipe = tmp_path / "recipe.yaml"  # a recipe given where a profile belongs: the error says what a profile is,
    recipe.write_text("name: x\n" + "network:\n  channels: 16\n" * 40)  # and quotes the start of the file only
    with pytest.raises(ProfileError) as error:
        load_profile(recipe)
    message = str(error.value)
    assert "profiles are JSON written by eldarts profile-ops --out" in message
    assert "(given: 'name: x\\nnetwork:" in message and "...)" in message and len(message) < 300


# -- selection from known numbers -------------------------------------------

#: (forward ms, MACs per image, params): a made-up device where 5x5 and 7x7 ops are slow.
KNOWN = {
    "none": (0.01, 0, 0),
    "max_pool_3x3": (0.05, 0, 0),
    "avg_pool_3x3": (0.06, 16_384, 0),
    "skip_connect": (0.02, 0, 0),
    "sep_conv_3x3": (0.15, 950_272, 864),
    "sep_conv_5x5": (0.30, 1_474_560, 1_376),
    "dil_conv_3x3": (0.10, 475_136, 432),
    "dil_conv_5x5": (0.25, 737_280, 688),
}


def known_profile() -> ProfileResult:
    def timing(ms):
        return Timing(median_ms=ms, q1_ms=ms * 0.9, q3_ms=ms * 1.1, min_ms=ms * 0.8, max_ms=ms * 1.3, repeats=5)

    return ProfileResult(
        environment=Environment(
            device="cpu", device_name="test cpu", torch_version="x", threads=1, python_version="3",
            platform="test", mac_counter="thop", measured_at="2024-01-01T00:00:00+00:00",
        ),
        settings=ProfileSettings(channels=16, resolution=32, batch=64, stride=1, repeats=5, warmup=1, backward=False),
        ops=[
            OpProfile(name=name, forward=timing(ms), macs=macs, params=params, output_shape=[64, 16, 32, 32], zero=name == "none")
            for name, (ms, macs, params) in KNOWN.items()
        ],
    )


@pytest.mark.parametrize(
    "budgets, expected",
    [
        (Budgets(latency_ms=0.2), ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]),
        (Budgets(latency_ms=0.05), ["max_pool_3x3", "skip_connect"]),
        (Budgets(latency_rel=3.0), ["max_pool_3x3", "avg_pool_3x3", "skip_connect"]),
        (Budgets(macs_m=0.5), ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "dil_conv_3x3"]),
        (Budgets(params_k=0.7), ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "dil_conv_3x3", "dil_conv_5x5"]),
        (Budgets(latency_ms=0.2, params_k=0.5), ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "dil_conv_3x3"]),
    ],
)
def test_selection_is_exactly_the_ops_within_budget(budgets, expected):
    result = known_profile()
    chosen = select_space(result, budgets)
    assert chosen == expected
    for name, (ms, macs, params) in KNOWN.items():
        within = all(
            [
                budgets.latency_ms is None or ms <= budgets.latency_ms,
                budgets.latency_rel is None or ms / KNOWN["skip_connect"][0] <= budgets.latency_rel,
                budgets.macs_m is None or macs / 1e6 <= budgets.macs_m,
                budgets.params_k is None or params / 1e3 <= budgets.params_k,
            ]
        )
        assert (name in chosen) == (within and name != "none")


def test_ess_is_the_darts_space_within_the_paper_budget_minus_avg_pool():
    # Latency alone keeps avg_pool_3x3 too; the paper dropped it as redundant with max_pool (2.2.1).
    chosen = select_space(known_profile(), Budgets(latency_ms=0.2))
    assert set(chosen) - {"avg_pool_3x3"} == set(ESS_SPACE)


def test_none_only_with_keep_none():
    result = known_profile()
    assert "none" not in select_space(result, Budgets(latency_ms=1.0))
    assert select_space(result, Budgets(latency_ms=1.0), keep_none=True)[0] == "none"


def test_selection_errors():
    result = known_profile()
    with pytest.raises(ProfileError, match="at least one budget"):
        select_space(result, Budgets())
    with pytest.raises(ProfileError, match="no op fits.*cheapest op is skip_connect"):
        select_space(result, Budgets(latency_ms=0.001))
    with pytest.raises(ProfileError, match="only skip_connect fits .* at least two ops .* the next cheapest op is "
                                           "max_pool_3x3 at 0.05 ms"):  # a space recipes would refuse
        select_space(result, Budgets(latency_ms=0.03))
    # 'none' and one op: derivation never picks 'none', so that is no choice either (it was written, exit 0)
    with pytest.raises(ProfileError, match="only skip_connect fits .* at least two ops other than none"):
        select_space(result, Budgets(latency_ms=0.03), keep_none=True)
    assert select_space(result, Budgets(latency_ms=0.05), keep_none=True) == ["none", "max_pool_3x3", "skip_connect"]
    with pytest.raises(ProfileError, match="0 or more"):
        Budgets(macs_m=-1)


def test_cli_refuses_a_space_of_none_and_one_op(tmp_path):
    """``--keep-none`` with one op and ``none`` within the budget wrote ``ops: [none, skip_connect]`` after a
    warning, exit 0, where one op alone was refused: neither leaves a choice."""
    space = tmp_path / "sn.yaml"
    result = runner.invoke(app, ["profile-ops", *CLI_TINY, "--ops", "skip_connect,none", "--budget-macs", "1",
                                 "--keep-none", "--emit-space", str(space)])
    assert result.exit_code == 2, result.output
    assert "only skip_connect fits the budget (MACs <= 1 M/image), and a search space needs at least two ops other " \
           "than none to choose among" in " ".join(result.stderr.split())
    assert not space.exists()


def test_emitted_yaml_is_a_search_space_snippet(tmp_path):
    result, budgets = known_profile(), Budgets(latency_ms=0.2)
    ops = select_space(result, budgets)
    path = tmp_path / "space.yaml"
    emit_space_yaml(ops, path, result=result, budgets=budgets)
    text = path.read_text()
    assert text.startswith("# generated by eldarts profile-ops on cpu")
    assert "latency <= 0.2 ms" in text
    assert yaml.safe_load(text) == {"search_space": {"ops": ops}}


def test_emitted_yaml_is_includable_by_a_search_recipe(tmp_path):
    from eldarts_cli.config import base as recipe_module
    from eldarts_cli.config.search import SearchRecipe

    result, budgets = known_profile(), Budgets(macs_m=0.5)
    ops = select_space(result, budgets)
    emit_space_yaml(ops, tmp_path / "my-space.yaml", result=result, budgets=budgets)
    (tmp_path / "recipe.yaml").write_text("include: [my-space.yaml]\n")
    recipe = recipe_module.load_recipe(tmp_path / "recipe.yaml", SearchRecipe)
    assert recipe.search_space.ops == ops


def test_plot_is_written(tmp_path):
    path = tmp_path / "latency.png"
    plot_latency(known_profile(), path, selected=["skip_connect"], budget_ms=0.2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    with pytest.raises(ProfileError, match=r"\.png"):
        plot_latency(known_profile(), tmp_path / "latency.bmp")


# -- CLI ---------------------------------------------------------------------

CLI_TINY = ["--channels", "4", "--resolution", "8", "--batch", "2", "--repeats", "2", "--warmup", "1",
            "--device", "cpu", "--threads", "1"]


def test_cli_writes_table_json_plot_and_space(tmp_path):
    args = ["profile-ops", *CLI_TINY, "--ops", "skip_connect,sep_conv_3x3", "--ops", "max_pool_3x3",
            "--out", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png"),
            "--budget-macs", "0.001", "--emit-space", str(tmp_path / "s.yaml")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sep_conv_3x3" in result.stdout and "✗" in result.stdout
    assert load_profile(tmp_path / "p.json").names() == ["skip_connect", "sep_conv_3x3", "max_pool_3x3"]
    assert (tmp_path / "p.png").stat().st_size > 0
    # 0.001 M MACs per image at C=4, 8x8: the parameter-free ops only
    assert yaml.safe_load((tmp_path / "s.yaml").read_text()) == {"search_space": {"ops": ["skip_connect", "max_pool_3x3"]}}

    again = runner.invoke(app, ["profile-ops", "--from", str(tmp_path / "p.json"), "--json"])
    assert again.exit_code == 0, again.output
    assert ProfileResult.model_validate(json.loads(again.stdout)) == load_profile(tmp_path / "p.json")
    # with budgets, the selection beside the profile (it was left out of --json)
    chosen = runner.invoke(app, ["profile-ops", "--from", str(tmp_path / "p.json"), "--json", "--budget-macs", "0.001"])
    assert chosen.exit_code == 0, chosen.output
    data = json.loads(chosen.stdout)
    assert data["selection"] == {"within": "MACs <= 0.001 M/image", "ops": ["skip_connect", "max_pool_3x3"]}
    assert ProfileResult.model_validate(data["profile"]) == load_profile(tmp_path / "p.json")
    # --ops narrows the ops read (README: narrow the candidates to the paper's ESS with it); it was refused
    narrowed = runner.invoke(app, ["profile-ops", "--from", str(tmp_path / "p.json"), "--json", "--ops",
                                   "max_pool_3x3,skip_connect", "--budget-macs", "0.001"])
    assert narrowed.exit_code == 0, narrowed.output
    data = json.loads(narrowed.stdout)
    assert [op["name"] for op in data["profile"]["ops"]] == ["skip_connect", "max_pool_3x3"]
    assert data["selection"]["ops"] == ["skip_connect", "max_pool_3x3"]
    absent = runner.invoke(app, ["profile-ops", "--from", str(tmp_path / "p.json"), "--ops", "dil_conv_3x3"])
    assert absent.exit_code == 2 and "--ops dil_conv_3x3: not in" in " ".join(absent.output.split()), absent.output
    assert "measure it anew without --from" in " ".join(absent.output.split())
    # options of a measurement (or of --table) that --from or a profile would not use are named, not ignored
    for extra, named in ((["--repeats", "500"], "--repeats"), (["--threads", "2"], "--threads"),
                         (["--warmup", "0"], "--warmup"), (["--dtype", "float16"], "--dtype")):
        refused = runner.invoke(app, ["profile-ops", "--from", str(tmp_path / "p.json"), *extra])
        assert refused.exit_code == 2 and f"--from reads measurements already made: {named} would not apply; " \
            "leave it out" in \
            " ".join(refused.output.split()), refused.output
    for extra in (["--nodes", "7"], ["--multiplier", "3"]):
        refused = runner.invoke(app, ["profile-ops", "--from", str(tmp_path / "p.json"), *extra])
        assert refused.exit_code == 2 and f"{extra[0]} applies with --table and --network only; leave it out" in \
            " ".join(refused.output.split()), refused.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ops", "sep_conv_3x4"], "did you mean 'sep_conv_3x3'"),
        (["--ops", ","], "--ops is empty"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "cuda:7"], "cuda:7"),
        (["--device", ""], "--device: unknown device '': use auto, cpu"),  # as search says it (it was taken for auto)
        (["--table", "t.json", "--network", str(RECIPES / "eval-quick.yaml"), "--device", " "],
         "--device: unknown device ' '"),
        (["--channels", "0"], "--channels must be a positive integer, got 0"),
        (["--batch", "-1"], "--batch must be a positive integer"),
        (["--resolution", "0"], "--resolution must be a positive integer"),
        (["--stride", "3"], "--stride must be 1"),
        (["--stride", "2", "--resolution", "2"], "too small for stride 2"),
        (["--stride", "2", "--channels", "3", "--ops", "skip_connect"], "op 'skip_connect' cannot be built"),
        (["--repeats", "0"], "--repeats must be a positive integer"),
        # sizes past any device, and thread counts past any machine: they ended in a traceback (an integer overflow
        # in randn) or a segmentation fault (OpenMP at 100,000 threads)
        (["--batch", "99999999999999999999999"], "is 1.64e+27 values, past what any device holds"),
        (["--threads", "100000"], "--threads must be an integer from 1 to 1024, got 100000"),
        (["--emit-space", "s.yaml"], "--emit-space needs a budget"),
        (["--budget-latency", "-1"], "--budget-latency must be a finite number, 0 or more, got -1.0"),
        (["--budget-macs", "inf"], "--budget-macs must be a finite number, 0 or more, got inf"),  # no bound: refused
        (["--from", "p.json", "--channels", "8", "--batch", "4"], "--from reads measurements already made: "
                                                                  "--channels, --batch would not apply; leave them"),
        (["--nodes", "3", "--multiplier", "2"], "--nodes and --multiplier apply with --table and --network only; "
                                                "leave them out"),
        # a space's name beside ops read as an unknown op, though --ops ess alone works
        (["--ops", "ess,avg_pool_3x3"], "--ops: ess is a search space's name, taken only on its own (--ops ess); to "
                                        "measure other ops too, list them all: --ops skip_connect,sep_conv_3x3,"
                                        "max_pool_3x3,dil_conv_3x3,avg_pool_3x3"),
        (["--plot", "p.jpg2"], "--plot p.jpg2"),
        (["--from", "missing.json"], "no such profile file"),
        (["--out", "/proc/eldarts-profile.json"], "cannot write in /proc"),  # before measuring, not after
        (["--ops", "sep_conv_3x3", "--budget-latency-rel", "2"], "add it to --ops"),
    ],
)
def test_cli_bad_arguments_are_clear_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    timing = [] if "--from" in args else ["--repeats", "1", "--warmup", "0", "--threads", "1"]  # --from refuses them
    result = runner.invoke(app, ["profile-ops", *timing, *args])
    assert result.exit_code == 2
    assert "error:" in result.stderr and message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "s.yaml").exists()


def test_cli_ops_takes_a_search_spaces_name(tmp_path):
    """``--ops ess`` measures the space's four ops, as ``--table ... --ops ess`` did (it was "unknown op 'ess'")."""
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["profile-ops", *CLI_TINY, "--ops", "ess", "--out", str(out)])
    assert result.exit_code == 0, result.output
    from eldarts_cli.models.spaces import SEARCH_SPACES

    assert [item["name"] for item in json.loads(out.read_text())["ops"]] == list(SEARCH_SPACES.get("ess").ops)


def test_ops_help_names_the_spaces_and_the_tables_default():
    """The help said "default: every registered op", which --table does not measure (it leaves out none), and did
    not say that a space's name is taken."""
    from typer.main import get_command
    from eldarts_cli.models.spaces import SEARCH_SPACES

    command = get_command(app).commands["profile-ops"]
    text = next(param.help for param in command.params if param.name == "ops")
    assert f"({', '.join(SEARCH_SPACES.names())})" in text and "with --table, every one but none" in text


def test_cli_output_path_that_is_a_folder(tmp_path):
    result = runner.invoke(app, ["profile-ops", *CLI_TINY, "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "directory" in result.output or "folder" in result.output


def test_measurements_are_kept_when_no_op_fits_the_budget(tmp_path):
    out = tmp_path / "p.json"
    args = ["profile-ops", *CLI_TINY, "--ops", "sep_conv_3x3", "--budget-params", "0.001", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no op fits" in result.stderr
    assert load_profile(out).names() == ["sep_conv_3x3"]


def test_busy_cpu_warning(monkeypatch):
    import eldarts_cli.engines.profile as profile

    monkeypatch.setattr(profile, "_load_average", lambda: 64.0)
    assert "busy" in profile.busy_cpu_warning(torch.device("cpu"), threads=2)
    assert profile.busy_cpu_warning(torch.device("cuda"), threads=2) is None
    monkeypatch.setattr(profile, "_load_average", lambda: 0.0)
    assert profile.busy_cpu_warning(torch.device("cpu"), threads=1) is None
    # more threads than cores (64 on 2 took sep_conv_3x3 from 0.14 to 3.6 ms, C=16, 8x8, batch 8) was silent on an
    # idle CPU, and blamed on the load on a busy one: the warning names the cores
    cores = len(available_cores())
    for load in (0.0, 64.0):
        monkeypatch.setattr(profile, "_load_average", lambda: load)
        warning = profile.busy_cpu_warning(torch.device("cpu"), threads=cores + 1)
        assert warning == (f"torch uses {cores + 1} threads, more than the {cores} core{'s' if cores > 1 else ''} "
                           f"this process may run on: timings will be inflated; pass --threads {cores} or fewer")


def test_a_hand_edited_profile_with_an_unknown_or_repeated_op_is_refused(tmp_path):
    """``--from`` a profile edited by hand: an op name eldarts does not know was accepted, and --emit-space wrote it
    into a snippet that search then refused; an op listed twice was selected on one of its measurements."""
    out = tmp_path / "p.json"
    assert runner.invoke(app, ["profile-ops", *CLI_TINY, "--ops", "skip_connect,max_pool_3x3", "--out",
                               str(out)]).exit_code == 0
    data = json.loads(out.read_text())
    for name, message in (("sep_conv_3x33", "unknown op 'sep_conv_3x33' (did you mean 'sep_conv_3x3'?)"),
                          ("skip_connect", "skip_connect measured twice")):
        data["ops"][1]["name"] = name
        out.write_text(json.dumps(data))
        result = runner.invoke(app, ["profile-ops", "--from", str(out)])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_a_relative_budget_against_a_reference_of_no_time_is_refused(tmp_path):
    """A profile whose skip_connect took 0 ms (a hand-edited or rounded profile) kept every op under any relative
    budget (no multiple of 0 was computed: each op counted as the zero op); it is one error line naming the fix."""
    out = tmp_path / "p.json"
    assert runner.invoke(app, ["profile-ops", *CLI_TINY, "--ops", "skip_connect,sep_conv_3x3", "--out",
                               str(out)]).exit_code == 0
    data = json.loads(out.read_text())
    for timing in data["ops"][0]["forward"]:
        if timing.endswith("_ms"):
            data["ops"][0]["forward"][timing] = 0.0
    out.write_text(json.dumps(data))
    result = runner.invoke(app, ["profile-ops", "--from", str(out), "--budget-latency-rel", "2",
                                 "--emit-space", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2, result.output
    assert ("a relative latency budget needs a time for 'skip_connect', and this profile gives it 0 ms; use "
            "--budget-latency MS instead") in " ".join(result.stderr.split())
    assert not (tmp_path / "s.yaml").exists()


def test_quoted_file_text_is_printed_as_it_is(tmp_path):
    """A file given to --from whose text holds ":x:" (/etc/passwd) was quoted with rich's emoji code turned into an
    emoji, so the quote did not match the file; the consoles print text as it is."""
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = CliRunner().invoke(app, ["profile-ops", "--from", str(passwd)])
    assert result.exit_code == 2 and "'root:x:0:0:root:/root:/bin/bash" in result.output, result.output
