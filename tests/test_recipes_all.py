"""Every file in recipes/ validates against the recipe type its name says."""

from pathlib import Path

import pytest

from eldarts_cli.config.ablate import load_ablation
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.evaluate import EvalRecipe
from eldarts_cli.config.search import SearchRecipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes_of_every_kind():
    names = [p.name for p in RECIPES]
    for prefix in ("search-", "eval-", "ablate-", "quickstart"):
        assert any(n.startswith(prefix) for n in names), prefix


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    if path.name.startswith(("search", "quickstart")):
        load_recipe(path, SearchRecipe)
    elif path.name.startswith("eval"):
        load_recipe(path, EvalRecipe)
    elif path.name.startswith("ablate"):
        load_ablation(path)
    else:
        pytest.fail(f"{path.name}: name it search-*, eval-*, ablate-* or quickstart")
