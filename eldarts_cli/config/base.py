"""Reading recipes: YAML -> includes -> ``--set`` overrides -> a strict pydantic model.

``load_recipe`` reads a YAML file (``include:`` files first, the recipe on
top), applies ``--set a.b=value`` overrides, and validates the result
against a pydantic model whose every section forbids unknown keys
(:class:`StrictModel`). Errors name the file and line (or ``--set KEY``),
the field path, the value given and, for a typo, the closest valid name
(``core.validation.format_validation_error``). The recipe models live beside
this module: ``sections`` (shared), ``search``, ``evaluate``, ``ablate``.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional, Type, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, ValidationError

from ..core.errors import EldartsError, RecipeError, RunFolderError
from ..core.io import atomic_write_text
from ..core.validation import StrictModel, format_validation_error

M = TypeVar("M", bound=BaseModel)

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")


def _run_name(name: str) -> str:
    # The name becomes a folder under runs/: a path in it would put the run elsewhere (name: ../../x).
    if not _RUN_NAME.fullmatch(name):
        raise ValueError(
            "a run name is a plain folder name under runs/: letters, digits and . _ + = - (not first), "
            "at most 100 characters"
        )
    return name


#: The ``name`` field of every recipe: it names the default run folder ``runs/<name>...``.
def _name_not_a_number(name: Any) -> Any:
    # YAML reads name: 0123 as the number 123 (and PyYAML as 83): its text is gone, so a number is refused
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        raise ValueError(f"a run name is text, and YAML read this one as the number {name}: quote it in the recipe "
                         f"(name: '...'); --set name=... keeps what you type")
    return name


def _path_not_a_number(value: Any) -> Any:
    # YAML reads root: 2024 as a number and root: no as false: the text is gone (0755 was 755), so it is refused
    if isinstance(value, (bool, int, float)):
        raise ValueError(f"a path is text, and YAML read this one as {value!r}: quote it in the recipe "
                         "(root: '...'); --set keeps what you type")
    return value


#: A path a recipe gives (data.root, cost.network, ...): text, as typed.
RecipePath = Annotated[Path, BeforeValidator(_path_not_a_number)]

RunName = Annotated[str, BeforeValidator(_name_not_a_number), AfterValidator(_run_name),
                    Field(description="run name: the default run folder is runs/<name>...")]


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with two fixes for recipes.

    * A key given twice in one mapping is an error (PyYAML keeps the last one silently).
    * ``1e-3`` is a number, as in YAML 1.2 (YAML 1.1 needs ``1.0e-3`` and reads ``1e-3`` as text).
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' is given twice (first on line {first})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml12_int(loader: RecipeLoader, node: yaml.ScalarNode) -> Any:
    """Integers as YAML 1.2 reads them: ``010`` is 10 and ``12:30`` is text (YAML 1.1, PyYAML's, read them as the
    octal 8 and the base-60 750: ``search.epochs=010`` ran 8 epochs, ``seed: 0123`` seeded 83, silently)."""
    text = loader.construct_scalar(node)
    plain = str(text).replace("_", "")
    if ":" in plain:
        return str(text)
    if re.fullmatch(r"[-+]?0[0-9]+", plain):
        return int(plain, 10)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader subclass)


#: Values (mappings, lists and scalars, aliases counted each time they are used) a recipe may expand to: a
#: real recipe holds a few hundred; nested YAML aliases can expand a small file past any memory.
MAX_RECIPE_VALUES = 100_000


def _compose_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line. Raises ``ValueError`` for a document that
    refers to itself through an alias, or expands to more than ``MAX_RECIPE_VALUES`` values."""
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    count = 0

    def walk(n, path, ancestors):
        nonlocal count
        count += 1
        if count > MAX_RECIPE_VALUES:
            raise ValueError(f"it expands to more than {MAX_RECIPE_VALUES:,} values (nested YAML aliases?)")
        if id(n) in ancestors:
            raise ValueError("it contains itself (a YAML alias inside its own anchor)")
        children = n.value if isinstance(n, yaml.MappingNode) else \
            list(enumerate(n.value)) if isinstance(n, yaml.SequenceNode) else []
        ancestors.add(id(n))
        for key, value in children:
            if isinstance(key, int):
                p, line = path + (key,), value.start_mark.line + 1
            else:
                p, line = path + (str(key.value),), key.start_mark.line + 1
            lines[p] = line
            walk(value, p, ancestors)
        ancestors.discard(id(n))

    if node is not None:
        try:
            walk(node, (), set())
        except RecursionError:
            raise ValueError("it is nested too deeply") from None
    return lines


def read_text_file(path: Path, what: str = "recipe") -> str:
    """The text of a YAML file, or one :class:`RecipeError` line (missing, a folder, unreadable, binary)."""
    if not path.exists():
        raise RecipeError(f"{what} {path} does not exist")
    if path.is_dir():
        raise RecipeError(f"{what} {path} is a folder, not a YAML file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"{what} {path} is not a text file (byte {error.start} is not UTF-8): give a YAML recipe"
        ) from None
    except OSError as error:
        raise RecipeError(f"cannot read {what} {path}: {error.strerror or error}") from None


def _yaml_fault(path: Path, error: yaml.YAMLError) -> str:
    """PyYAML's error as one line at the place to look: where the broken part starts (an unclosed quote or
    bracket, a key without its colon), with where the reader gave up; that place alone was past the file's end
    or a line below the fault."""
    mark, context = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return f"{path}: malformed YAML: {problem}"
    # the start of what is broken, for the scanner's faults (an unclosed quote, a key without its colon) and an
    # unclosed flow bracket; a block's own start (line 1 of a mis-indented file) is not the place to look
    opened = isinstance(error, yaml.scanner.ScannerError) or "flow" in str(getattr(error, "context", "") or "")
    if opened and context is not None and getattr(error, "context", None) and \
            (context.line, context.column) != (mark.line, mark.column):
        return (f"{path}:{context.line + 1}:{context.column + 1}: malformed YAML: {error.context} that starts here, "
                f"{problem} at line {mark.line + 1}, column {mark.column + 1}")
    hint = (" (on this line or one above: a key's colon needs a space after it, 'key: value', and the keys of "
            "one section the same indentation)"
            if problem.startswith("mapping values are not allowed") else
            " (YAML indents with spaces, not tabs)" if "'\\t'" in problem else
            " (this line is indented otherwise than the keys of its section)" if "<block end>" in problem else "")
    return f"{path}:{mark.line + 1}:{mark.column + 1}: malformed YAML: {problem}{hint}"


def _read_yaml(path: Path, what: str = "recipe") -> tuple[dict, dict[tuple, int]]:
    text = read_text_file(path, what)
    try:  # (first: loading a self-referring or exploding document is what this check keeps from running)
        lines = _compose_lines(text)
    except ValueError as error:
        raise RecipeError(f"{path} cannot be a {what}: {error}") from None
    try:
        data = parse_yaml(text)
    except RecursionError:
        raise RecipeError(f"{path} cannot be a {what}: it is nested too deeply") from None
    except yaml.YAMLError as error:
        raise RecipeError(_yaml_fault(path, error)) from None
    if data is None:  # an empty file, or comments alone: most likely not the file meant
        article = "an" if what[0] in "aeiou" else "a"
        raise RecipeError(f"{path} is empty: {article} {what} holds sections (e.g. recipes/search-cifar10.yaml); "
                          f"to run every default on purpose, write {{}}")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data, lines


def deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe_dict(path: Path, _seen: tuple = ()) -> tuple[dict, dict[tuple, int]]:
    """The recipe as a plain dict, with ``include:`` files merged underneath."""
    path = Path(path)
    if path.resolve() in _seen:
        cycle = [*_seen[list(_seen).index(path.resolve()):], path.resolve()]  # from the file met again, back to it
        raise RecipeError(f"{path}: include cycle: {' -> '.join(p.name for p in cycle)} (in {cycle[0].parent})"
                          if len({p.parent for p in cycle}) == 1 else
                          f"{path}: include cycle: {' -> '.join(map(str, cycle))}")
    data, lines = _read_yaml(path, "included file" if _seen else "recipe")
    _key_value_lists_as_mappings(data)
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(inc, str) for inc in includes):
        raise RecipeError(f"{path}:{lines.get(('include',), '?')}: include: give a file name or a list of file names")
    merged: dict = {}
    merged_lines: dict[tuple, Any] = {}
    for inc in includes:
        inc_path = Path(inc).expanduser()  # ~/space.yaml, as data.root takes it
        inc_path = inc_path if inc_path.is_absolute() else path.parent / inc_path
        if not inc_path.exists():
            raise RecipeError(f"{path}:{lines.get(('include',), '?')}: included file {inc} does not exist")
        inc_data, inc_lines = read_recipe_dict(inc_path, _seen + (path.resolve(),))
        _anchor_file_paths(inc_data, inc_path.absolute().parent)  # (absolute: the top file's folder is not added again)
        if isinstance(_ops(inc_data), list) and _ops(data) is not None and _ops(inc_data) != _ops(data):
            # a space written by profile-ops --emit-space, included as README says, lost to the file's own ops
            def shown(ops: Any) -> str:
                return f"[{', '.join(map(str, ops))}]" if isinstance(ops, list) else str(ops)
            warnings.warn(f"{path}: its search_space.ops {shown(_ops(data))} replaces the {shown(_ops(inc_data))} of "
                          f"the file it includes, {inc} (a file's own values win over an included file's): to search "
                          f"the included ops, remove search_space.ops from {path.name}")
        if None not in (_ops(inc_data), _ops(merged)) and _ops(inc_data) != _ops(merged) \
                and _ops(data) is None:  # (two included files' ops: the later won without a word)
            warnings.warn(f"{path}: the included {inc}'s search_space.ops replaces those of a file included before "
                          "it (a later include wins): list the file whose ops you want last, or leave one out")
        merged = deep_merge(merged, inc_data)
        # an error in a key the included file gives names that file and line: (file, line) pairs
        merged_lines.update({key: line if isinstance(line, tuple) else (str(inc_path), line)
                             for key, line in inc_lines.items()})
    result = deep_merge(merged, data)
    _keep_preset_cell(merged.get("search_space"), result)
    return result, {**merged_lines, **lines}


#: Settings that take a mapping of recipe sections or a list of ``key=value`` strings (an ablation's).
KEY_VALUE_LISTS = ("overrides", "evaluate.overrides")
#: Paths a recipe file gives relative to its own folder (an ablation's; other paths are read from where eldarts runs).
FILE_RELATIVE_PATHS = ("base", "evaluate.recipe")


def _parent_of(data: dict, key: str) -> tuple[Optional[dict], str]:
    *sections, name = key.split(".")
    for section in sections:
        data = data.get(section) if isinstance(data, dict) else None
    return (data if isinstance(data, dict) else None), name


def _key_value_lists_as_mappings(data: dict) -> None:
    """A list of ``key=value`` strings given for a mapping-or-list setting, as the mapping it stands for: merged
    with another file's or a --set's mapping, a list replaced it whole (``--set 'overrides=[a.b=1]'`` dropped every
    override of the file without a word). A list that is no such thing is left for validation to name."""
    for key in KEY_VALUE_LISTS:
        parent, name = _parent_of(data, key)
        if parent is not None and name in parent:
            parent[name] = as_mapping(parent[name])


def as_mapping(value: Any, strict: bool = False) -> Any:
    """A list of ``key=value`` strings as the nested mapping it stands for; anything else unchanged. Not strict
    (a recipe file's or --set's value), a list that is no such thing is left for validation to name; strict (a
    validator's), ``None`` is an empty mapping and such a list raises ``ValueError``."""
    if strict and value is None:
        return {}
    if isinstance(value, (list, tuple)):
        if not all(isinstance(item, str) for item in value):
            if strict:
                raise ValueError("give overrides as a mapping of recipe sections or a list of 'key=value' strings")
            return value
        try:
            return apply_overrides({}, list(value))
        except RecipeError as error:
            if strict:
                raise ValueError(str(error)) from None
    return value


def _anchor_file_paths(data: dict, folder: Path) -> None:
    """An included file's relative ``FILE_RELATIVE_PATHS``, read from its own folder (they were read from the top
    file's, and a file of that name there was taken without a word)."""
    for key in FILE_RELATIVE_PATHS:
        parent, name = _parent_of(data, key)
        value = parent.get(name) if parent is not None else None
        if isinstance(value, str) and value.strip() and not Path(value.strip()).expanduser().is_absolute():
            parent[name] = str(folder / value.strip())


def _ops(data: dict) -> Any:
    section = data.get("search_space")
    return section.get("ops") if isinstance(section, dict) else None


def _keep_preset_cell(before: Any, data: dict) -> None:
    """A named space's cell stays when its ops are replaced by a list: ``ops: nb201`` searches NAS-Bench-201's
    cell, and ``--set search_space.ops=[nor_conv_3x3,skip_connect]`` (narrowing it, a common ablation) silently
    searched DARTS' cell instead, in a DARTS network. A ``cell`` given with the list wins."""
    from ..models.spaces import SEARCH_SPACES

    after = data.get("search_space")
    if not (isinstance(before, dict) and isinstance(after, dict)) or "cell" in before or "cell" in after:
        return
    preset = before.get("ops")
    if isinstance(preset, str) and not isinstance(after.get("ops"), str) and preset in SEARCH_SPACES:
        cell = SEARCH_SPACES.get(preset).cell
        if cell != "darts":  # (darts: the default cell anyway)
            after["cell"] = cell


#: Recipe fields that hold a path: a ``--set`` of one keeps the text as typed (``data.root=2024`` was the number
#: 2024, refused as "not a valid path"; ``data.root=~`` was null, and then "needs data.root").
PATH_KEYS = frozenset({"data.root", "cost.network", "cost.table", "base", "evaluate.recipe"})


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` strings; the value is parsed as YAML (``[a, b]``, ``1e-3``, ``true``). A mapping given
    for a section the recipe has is merged into it (the keys it gives replace theirs; the others stay)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set search.epochs=10")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise RecipeError(f"--set {item!r}: empty key")
        try:
            value = parse_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            if raw.strip()[:1] in "{[":  # a mapping or list YAML cannot read (a key given twice): not text
                problem = getattr(error, "problem", None) or str(error).splitlines()[0]
                raise RecipeError(f"--set {item!r}: not a valid YAML {'mapping' if raw.strip()[0] == '{' else 'list'}"
                                  f": {problem}") from None
            value = raw
        if key == "name" or key in PATH_KEYS:  # text as typed: YAML would read 2024 as a number, ~ as null
            value = raw.strip()
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: '{part}' is a value, not a section")
            node = child
        if key in KEY_VALUE_LISTS:  # a list of key=value strings, as the mapping it stands for: merged, below
            value = as_mapping(value)
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            value = deep_merge(node[parts[-1]], value)  # --set 'search={epochs: 10}' keeps the section's other keys
        space = copy.deepcopy(data.get("search_space"))
        node[parts[-1]] = value
        _keep_preset_cell(space, data)
    return data


def mark_overrides(lines: dict[tuple, Any], overrides: list[str] | None,
                   label: str = "--set {key}") -> dict[tuple, Any]:
    """Point errors in overridden fields at ``--set KEY`` (or ``label``) instead of the file's line."""
    lines = dict(lines)
    for item in overrides or []:
        key, _, raw = item.partition("=")
        key = key.strip()
        path = tuple(key.split("."))
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = None
        if isinstance(value, dict) and value and any(k[: len(path)] == path and len(k) > len(path) for k in lines):
            # a mapping merged into a section the file has: its own keys are the --set's, the others still the file's
            for sub in dotted_keys(value):
                sub_path = path + tuple(sub.split("."))
                for known in [k for k in lines if k[: len(sub_path)] == sub_path]:
                    del lines[known]
                lines[sub_path] = label.format(key=f"{key}.{sub}")
            continue
        if len(path) > 1 and not any(k[:1] == path[:1] and len(k) > 1 for k in lines):
            # the --set makes a section the file has not (or has as null): what the section then lacks is the --set's
            lines[path[:1]] = label.format(key=key)
        for known in [k for k in lines if k[: len(path)] == path]:
            del lines[known]
        lines[path] = label.format(key=key)
    return lines


def dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """The leaf keys of a nested mapping as ``a.b.c`` strings."""
    keys = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        keys += dotted_keys(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return keys


#: Sections that only one kind of recipe has, and the command that takes that kind.
RECIPE_KINDS: dict[str, tuple[frozenset[str], str]] = {
    "search": (frozenset({"search_space", "partial_channels", "edge_coefficients", "entropy", "arch_optim", "search",
                          "cost"}), "eldarts search {path}"),
    "evaluation": (frozenset({"train", "schedule"}), "eldarts evaluate GENOTYPE {path}"),
    "ablation": (frozenset({"base", "rows", "seeds", "row_overrides", "b_off", "sweep"}), "eldarts ablate {path}"),
}


def _kind_of_file(path: Path) -> Optional[str]:
    """:func:`recipe_kind_of` a YAML file (``None`` where it cannot be read)."""
    try:
        return recipe_kind_of(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError, ValueError):
        return None


def recipe_kind_of(data: Any) -> Optional[str]:
    """The kind of recipe ``data`` is by its sections (``search``, ``evaluation``, ``ablation``), if it tells."""
    if not isinstance(data, dict):
        return None
    found = [kind for kind, (sections, _) in RECIPE_KINDS.items() if sections & set(data)]
    return found[0] if len(found) == 1 else None


def check_recipe_kind(data: Any, model_cls: type, origin: str, lines: Optional[dict] = None,
                      role: Optional[str] = None) -> None:
    """One clear line for a recipe of another kind (an evaluation recipe given to ``eldarts search``)
    instead of one unknown-key error per section; ``lines`` (``read_recipe_dict``'s): where an included file
    brings the other kind's sections, that file is named (the file given had been called the other kind).
    ``role``: what the file is for, said instead of the command that runs the other kind (a search recipe given as
    ``cost.network`` was told to ``use eldarts search``)."""
    expected = getattr(model_cls, "recipe_kind", None)
    found = recipe_kind_of(data)
    if expected is None or found is None or found == expected:
        return
    sections, command = RECIPE_KINDS[found]
    article = lambda kind: "an" if kind[0] in "ae" else "a"  # noqa: E731
    given = sorted(sections & set(data))
    places = [(lines or {}).get((key,)) for key in given]
    if places and all(isinstance(place, tuple) for place in places):
        included = sorted({place[0] for place in places})
        raise RecipeError(
            f"{origin} includes {', '.join(included)}, {article(found)} {found} recipe (it has {', '.join(given)}): "
            f"{article(expected)} {expected} recipe cannot include it"
        )
    instead = role or f"use `{command.format(path=origin)}`"
    raise RecipeError(
        f"{origin} is {article(found)} {found} recipe (it has {', '.join(given)}), "
        f"not {article(expected)} {expected} recipe; {instead}"
    )


def validate_recipe(data: dict, model_cls: Type[M], origin: str = "recipe", lines=None) -> M:
    try:
        return model_cls.model_validate(data)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error, model_cls, origin, lines)) from None


def load_recipe(path: Path | str | None, model_cls: Type[M], overrides: list[str] | None = None,
                label: str = "--set {key}", role: Optional[str] = None) -> M:
    """Load, merge includes, override, validate. ``path=None`` gives the model's defaults; an error in an
    overridden field is said as ``label`` (``--set KEY``); ``role``: :func:`check_recipe_kind`'s."""
    if path is None:
        data, lines, origin = {}, {}, "defaults"
    else:
        data, lines = read_recipe_dict(Path(path))
        origin = str(path)
        check_recipe_kind(data, model_cls, origin, lines, role)
    data = apply_overrides(data, overrides)
    return validate_recipe(data, model_cls, origin, mark_overrides(lines, overrides, label))


def recipe_to_dict(recipe: BaseModel) -> dict:
    return recipe.model_dump(mode="json")


class RecipeDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes text :class:`RecipeLoader` would read back as something else: PyYAML quotes
    by YAML 1.1's rules, under which ``1e3`` is text, where a recipe reads it as a number (a run named 1e3 could
    not be resumed from its own recipe.yaml)."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    node = dumper.represent_str(text)
    if node.style is None and "\n" not in text:
        try:
            if parse_yaml(text) != text:
                node.style = "'"
        except yaml.YAMLError:
            node.style = "'"
    return node


RecipeDumper.add_representer(str, _represent_text)


def recipe_yaml(recipe: BaseModel) -> str:
    """The fully resolved recipe (every default spelled out) as YAML."""
    return yaml.dump(recipe_to_dict(recipe), Dumper=RecipeDumper, sort_keys=False)


def dump_recipe(recipe: BaseModel, path: Path) -> None:
    atomic_write_text(path, recipe_yaml(recipe))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def recipe_differences(old: dict, new: dict, resumable: tuple[str, ...] = ()) -> list[str]:
    # One rule for every resume (search, evaluate, ablate): only fields under ``resumable`` may change.
    """``key: old -> new`` for every field that differs, except keys starting with one of ``resumable``."""
    a, b = _flatten(old), _flatten(new)
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and not key.startswith(resumable)
    ]


def edited_recipe_hint(run_dir: Path, started: dict, model_cls: Type[BaseModel],
                       resumable: tuple[str, ...]) -> Optional[str]:
    """For a resume refused as another recipe: where the run's own ``recipe.yaml`` (which the resume reads) is not
    the recipe its checkpoint holds, the words saying so (every difference was blamed on the user's --set)."""
    path = Path(run_dir) / "recipe.yaml"
    try:
        written = recipe_to_dict(load_recipe(path, model_cls))
    except EldartsError:
        written = None
    if written is None or recipe_differences(started, written, resumable):
        return (f"{path} itself differs from the recipe its checkpoint holds (edited or damaged since the run "
                "wrote it): the checkpoint's recipe is the run's")
    return None


def load_given_recipe(path: Path | str | None, model_cls: Type[M], overrides: list[str] | None,
                      resume: Optional[Path]) -> M:
    """The recipe a command names, with its ``--set``; on ``--resume``, where the ``--set`` fits the run's own
    recipe but not the file's (a run started with other values), the file without them: a resume goes on with the
    run's recipe (:func:`resume_recipe`), and an error should name the run's values, not the file's."""
    own = Path(resume) / "recipe.yaml" if resume is not None else None
    if (path is not None and not Path(path).expanduser().exists() and own is not None and own.is_file()
            and _kind_of_file(own) == getattr(model_cls, "recipe_kind", None)):  # (another kind's run: its error)
        # the file the run was started from, moved or deleted since: the resume goes on with the run's own copy
        warnings.warn(f"recipe {path} does not exist; the resume goes on with the run's own recipe ({own})")
        return load_recipe(own, model_cls, overrides)
    try:
        return load_recipe(path, model_cls, overrides)
    except RecipeError:
        if resume is None or not overrides or not (Path(resume) / "recipe.yaml").is_file():
            raise
        own = load_recipe(Path(resume) / "recipe.yaml", model_cls, overrides)  # its error, if any, is the one
        try:
            return load_recipe(path, model_cls)  # for the notes of how the file differs from the run
        except RecipeError:
            return own


def resume_recipe(run_dir: Path, model_cls: Type[M], given: M, overrides: list[str] | None,
                  resumable: tuple[str, ...]) -> tuple[M, list[str]]:
    """The recipe a resumed run continues with: the run's own ``recipe.yaml`` plus this command's ``--set``.

    Also returns the fields in which the recipe given now differs from the
    run's: a run started with ``--set search.epochs=10`` and resumed without
    it goes on with 10 epochs. A ``--set`` that changes more than the
    ``resumable`` fields is refused where the checkpoint is compared.
    """
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        if (Path(run_dir) / "checkpoint.pt").exists():  # the run started: --out would be refused as its folder
            raise RunFolderError(
                f"cannot resume: {run_dir} holds a checkpoint but no recipe.yaml (moved or deleted); put the run's "
                f"recipe back as {path} (the checkpoint is checked against it) and resume, or start the run anew in "
                "another folder")
        raise RunFolderError(f"cannot resume: {run_dir} holds no recipe.yaml, the run never started; "
                             f"start it with --out {run_dir}")
    stored, lines = read_recipe_dict(path)
    recipe = validate_recipe(apply_overrides(stored, overrides), model_cls, str(path), mark_overrides(lines, overrides))
    return recipe, recipe_differences(recipe_to_dict(recipe), recipe_to_dict(given), resumable)

