"""Errors that the CLI turns into one clear message and a non-zero exit code.

Library code raises these (never ``sys.exit``); ``eldarts_cli.cli`` catches
``EldartsError`` and prints ``error: <message>`` without a traceback.
"""

from __future__ import annotations


class EldartsError(Exception):
    """Base class of every user-facing error. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class RecipeError(EldartsError):
    """A recipe file or override that does not validate."""


class GenotypeError(EldartsError):
    """A genotype file or name that cannot be used."""


class DataError(EldartsError):
    """A dataset that is missing or malformed."""


class RunFolderError(EldartsError):
    """An output folder that already holds a run, or a folder that holds none."""


class CheckpointError(EldartsError):
    """A checkpoint that is missing, corrupted, or from another run."""
