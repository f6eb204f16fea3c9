"""Recipes: YAML files validated by strict pydantic models, one module per kind of recipe."""
