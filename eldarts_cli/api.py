"""The Python API: eldarts from your own code, the way timm offers ``create_model``.

    import eldarts_cli as eldarts

    genotype = eldarts.load_genotype("runs/c10")            # a run folder, genotype.json or zoo name
    cell = eldarts.load_genotype("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    nb201 = eldarts.create_network(cell)                      # NAS-Bench-201's network (C=16, 3 x 5 cells)
    model = eldarts.create_network(genotype, dataset="cifar10", channels=36, layers=20)
    trained = eldarts.load_trained("runs/eval-c10")          # weights.pt of an `eldarts evaluate` run
    found = eldarts.derive_genotype("runs/c10/checkpoint.pt")  # the cells a search checkpoint holds now

Every function raises an :class:`~eldarts_cli.core.errors.EldartsError`
subclass with a one-line message for bad input, as the CLI does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .core.errors import CheckpointError, GenotypeError, RecipeError, ResourceError, RunFolderError, is_out_of_memory
from .core.device import resolve_device
from .core.io import load_tensors, read_json
from .data.datasets import DATASETS
from torch import nn

from .models.genotypes import AnyGenotype, Genotype, derive_genotype as _derive, genotype_from_dict
from .models.genotypes import load_genotype as _load_genotype
from .models.nb201 import NB201Genotype, derive_nb201
from .models.network import build_network
from .models.supernet import node_softmax
from .runs.checkpoint import load_checkpoint
from .runs.files import run_file_kind
from .runs.folders import folder_kind, marker_kind

__all__ = ["Genotype", "NB201Genotype", "load_genotype", "create_network", "load_trained", "derive_genotype"]

#: (channels, layers) of each network kind when ``create_network`` is not told.
_DEFAULT_SIZES = {"cifar": (36, 20), "imagenet": (48, 14), "nb201": (16, 15)}


def load_genotype(ref: str | Path) -> AnyGenotype:
    """A genotype from a ``genotype.json`` file, a search or evaluation run folder, a zoo name
    (``DARTS_V2``, ``pc-darts``: case and ``-``/``_`` ignored), or a NAS-Bench-201 arch string
    (``|nor_conv_3x3~0|+|...|``) or a file holding one."""
    if not isinstance(ref, (str, Path)):
        raise GenotypeError(f"load_genotype takes a genotype.json file, a run folder, a zoo name or a NAS-Bench-201 "
                            f"arch string (given {ref!r})")
    if isinstance(ref, Path) or ref.startswith("~"):  # ~ is the home folder, as on the command line
        ref = str(Path(ref).expanduser())
    path = Path(ref)
    if path.is_dir() and not (path / "genotype.json").exists() and marker_kind(path) is not None:
        folder_kind(path, then="use its genotype")  # one not finished: how to resume it (or that it runs now)
    try:
        return _load_genotype(ref)
    except GenotypeError:
        if path.is_file() and (what := run_file_kind(path)) is not None:
            raise GenotypeError(_not_a_genotype(path, what)) from None
        if path.is_file() and _is_op_profile(path):
            raise GenotypeError(f"{path} is an op profile (eldarts profile-ops --out), not a genotype: give a "
                                f"genotype.json, a run folder or a zoo name") from None
        if path.is_file() and path.name in ("checkpoint.pt", "weights.pt"):  # (read as JSON: "not valid JSON")
            raise GenotypeError(f"{path} is a run's PyTorch {path.stem}, not a genotype: give its run folder "
                                f"({path.parent}) or its genotype.json") from None
        if path.is_dir() and (path / "ablation.json").is_file():
            raise GenotypeError(f"{path} is an ablation folder, which holds many searches: give one of its "
                                f"searches' run folders (under {path})") from None
        raise


def _is_op_profile(path: Path) -> bool:
    from .engines.profile import FORMAT

    try:
        data = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _not_a_genotype(path: Path, what: str) -> str:
    folder = path.parent
    if what.startswith("an ablation"):
        instead = f"one of its searches' run folders (under {folder})"
    elif (folder / "genotype.json").is_file():
        instead = f"its run folder ({folder}) or its genotype.json ({folder / 'genotype.json'})"
    else:
        instead = "its run folder or its genotype.json"
    return f"{path} is {what}, not a genotype: give {instead}"


def create_network(
    genotype: AnyGenotype | str | Path,
    *,
    dataset: Optional[str] = "cifar10",
    kind: Optional[str] = None,
    channels: Optional[int] = None,
    layers: Optional[int] = None,
    num_classes: Optional[int] = None,
    in_channels: Optional[int] = None,
    auxiliary: bool = False,
) -> nn.Module:
    """The evaluation network of ``genotype`` (paper 3.2/3.3; NAS-Bench-201's for its cells), untrained.

    ``dataset`` gives the input channels and classes (``num_classes`` and
    ``in_channels`` override them); ``kind`` is ``cifar``, ``imagenet`` or
    ``nb201`` (default: ``nb201`` for a NAS-Bench-201 cell, ``imagenet`` for
    the imagenet dataset, else ``cifar``); ``channels`` and ``layers`` default
    to the kind's published size (36/20, 48/14, 16/15). The network is returned in train mode; with
    ``auxiliary=True`` it then returns ``(logits, auxiliary logits)``, in eval mode the logits alone.
    """
    for name, value, least in (("channels", channels, 1), ("layers", layers, 3), ("num_classes", num_classes, 2),
                               ("in_channels", in_channels, 1)):  # the evaluation recipe's bounds
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise RecipeError(f"create_network: {name} takes a whole number of at least {least} (given {value!r})")
    if not isinstance(genotype, (Genotype, NB201Genotype)):
        genotype = load_genotype(genotype)
    spec = DATASETS.get(dataset) if dataset is not None else None
    if kind is None:
        if isinstance(genotype, NB201Genotype):
            kind = "nb201"
        else:
            kind = "imagenet" if spec is not None and spec.name == "imagenet" else "cifar"
    if not isinstance(auxiliary, bool):  # ("yes" built a head: any non-empty text is true)
        raise RecipeError(f"create_network: auxiliary takes True or False (given {auxiliary!r})")
    default_channels, default_layers = _DEFAULT_SIZES.get(kind, (36, 20))
    channels = channels if channels is not None else default_channels
    layers = layers if layers is not None else default_layers
    classes = num_classes if num_classes is not None else (spec.classes if spec else 10)
    in_channels = in_channels if in_channels is not None else (spec.channels if spec else 3)

    def build(layers: int, channels: int, classes: int = classes) -> nn.Module:
        return build_network(kind, genotype=genotype, num_classes=classes, channels=channels, layers=layers,
                             auxiliary=auxiliary, in_channels=in_channels)

    _check_fits(build, kind, channels, layers, classes, in_channels, spec.size if spec else 32)
    try:
        return build(layers, channels)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise ResourceError(f"create_network: the network (channels={channels}, layers={layers}) does not fit in "
                            f"memory: {str(error).splitlines()[0]}") from None


def _check_fits(build, kind: str, channels: int, layers: int, classes: int, in_channels: int, size: int) -> None:
    """Refuse a network whose weights alone would not fit in this process's memory, before building it (the CLI
    refuses it in a second; ``layers=100000`` here filled 24 GB for ten minutes). Sizes up to the published ones
    are built as they are; larger ones estimated from small copies (``models.sizes.estimate_footprint``), the
    classifier from 2 and 3 classes."""
    from .core.device import device_memory
    from .models.sizes import InputTooSmall, estimate_footprint

    if layers <= 24 and channels <= 64 and classes <= 1000:
        return
    memory = device_memory(torch.device("cpu"))
    if memory is None:
        return
    shape = dict(layers=layers, channels=channels, channel_multiple=4, input_size=(in_channels, max(size, 32)))
    try:
        two, three = (estimate_footprint(lambda l, c, k=k: build(l, c, k), **shape) for k in (2, 3))
    except InputTooSmall:
        return  # (the build says so)
    params = two.params + (classes - 2) * (three.params - two.params)
    need = 4 * params + (two.model_bytes() - 4 * two.params)
    if need > memory:
        from .core.device import format_bytes

        raise ResourceError(f"create_network: the {kind} network (channels={channels}, layers={layers}, "
                            f"num_classes={classes}) has about {params / 1e6:,.1f}M parameters, {format_bytes(need)} "
                            f"to build, more than the {format_bytes(memory)} this process may use; lower channels, "
                            "layers or num_classes")


def load_trained(run: str | Path, *, ema: bool = False, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """The network an ``eldarts evaluate`` run trained, rebuilt from its ``weights.pt``, in eval mode.

    ``ema=True`` loads the exponential moving average of the weights (runs with ``train.ema``). ``map_location``:
    the device the network is returned on (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a
    :class:`torch.device`; ``None``: the CPU, where weights.pt holds them). Its input: pixels scaled to [0, 1],
    minus ``input_mean``, over ``input_std`` (per channel; in the run's ``results.json`` and in ``weights.pt``'s
    ``input``); its outputs, the classes listed as ``classes`` there (runs from before they were kept: the sorted
    class folder names). A network with the auxiliary head (``network.auxiliary``) returns ``(logits, auxiliary
    logits)`` in train mode, the logits alone in eval mode.
    """
    if not isinstance(run, (str, Path)):
        raise RunFolderError(f"load_trained takes an evaluation run folder or its weights.pt (given {run!r})")
    if not isinstance(ema, bool):  # ("yes" loaded the EMA weights: any non-empty text is true)
        raise RecipeError(f"load_trained: ema takes True or False (given {ema!r})")
    map_location = "cpu" if map_location is None else map_location  # (torch.load's "where it was saved")
    if not isinstance(map_location, (str, torch.device)):
        raise RecipeError(f"load_trained: map_location takes a device name or a torch.device (given {map_location!r})")
    path = Path(run).expanduser()
    if path.is_dir():
        path = path / "weights.pt"
    if not path.is_file():
        raise RunFolderError(f"{path} does not exist (is {run} a finished `eldarts evaluate` run?)")
    # a device this machine lacks is said as such, not as a bad file; "auto" and "CPU" were handed to torch.load,
    # which called the file corrupted
    device = resolve_device(str(map_location), option="load_trained: map_location", instead="map_location=\"cpu\"")
    blob = load_tensors(path, what="an eldarts weights file", error=CheckpointError, map_location="cpu")
    if isinstance(blob, dict) and "network" not in blob and blob.get("kind") in ("evaluate", "search"):
        # (it said "it lacks 'network'")
        what = "an evaluation's checkpoint (to resume it)" if blob["kind"] == "evaluate" else "a search's checkpoint"
        raise CheckpointError(f"{path} is {what}, not a trained network: give a finished evaluation's run folder "
                              "or its weights.pt")
    try:
        genotype = genotype_from_dict(blob["genotype"], str(path))
        network, shape = blob["network"], blob["input"]
        state = blob["ema_state_dict"] if ema else blob["state_dict"]
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not an eldarts weights file (it lacks {error})") from None
    if state is None:
        raise CheckpointError(f"{path} holds no EMA weights: the run was trained without train.ema")
    try:
        model = build_network(
            network["kind"], genotype=genotype, num_classes=shape["num_classes"], channels=network["channels"],
            layers=network["layers"], auxiliary=network["auxiliary"], in_channels=shape["channels"],
        )
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} does not hold the network it describes ({first})") from None
    return model.to(device).eval()


def derive_genotype(checkpoint: str | Path) -> AnyGenotype:
    """The cells a search checkpoint's architecture weights give now (``checkpoint.pt`` or its run folder).

    The magnitude rule, as at the end of a search: per edge the strongest op
    other than ``none``, per node the two strongest edges (op weight x DCSS
    edge weight); for a NAS-Bench-201 search, the strongest op of every edge
    (``none`` included). Perturbation selection needs the data: it runs at the
    end of a search with ``derive.method: perturbation``.
    """
    if not isinstance(checkpoint, (str, Path)):  # (None: a TypeError of pathlib's)
        raise RunFolderError(f"derive_genotype takes a search run folder or its checkpoint.pt (given {checkpoint!r})")
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / "checkpoint.pt"
    if path.name == "weights.pt" and path.is_file():  # (it said "not an eldarts checkpoint (format 1)")
        raise CheckpointError(f"{path} is an evaluation's trained network, not a search checkpoint: its cell is in "
                              f"{path.parent / 'genotype.json'} (eldarts.load_genotype({str(path.parent)!r}))")
    state = load_checkpoint(path, kind="search")
    recipe, weights = state["recipe"], state["model"]
    nodes, multiplier = recipe["network"]["nodes"], recipe["network"]["multiplier"]
    ops = recipe["search_space"]["ops"]
    if recipe["search_space"].get("cell") == "nb201":
        genotype = derive_nb201(F.softmax(weights["alpha_normal"], -1), ops, nodes)
        return genotype.model_copy(update={"name": recipe.get("name")})

    def edges(name: str) -> Optional[torch.Tensor]:
        return node_softmax(weights[name], nodes) if name in weights else None

    genotype = _derive(F.softmax(weights["alpha_normal"], -1), F.softmax(weights["alpha_reduce"], -1), ops, nodes,
                       edges("edge_normal"), edges("edge_reduce"), multiplier)
    return genotype.model_copy(update={"name": recipe.get("name")})
