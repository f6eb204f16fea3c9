"""eldarts: EL-DARTS differentiable architecture search as a YAML-driven tool.

The Python API (:mod:`eldarts_cli.api`) is available from the package:
``eldarts_cli.load_genotype``, ``create_network``, ``load_trained``,
``derive_genotype``. It is imported on first use, so the command line
starts without loading torch.
"""

__version__ = "0.1.0"

_API = ("Genotype", "NB201Genotype", "load_genotype", "create_network", "load_trained", "derive_genotype")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'eldarts_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    # (the API is loaded on first use: listed here so that tab completion offers it)
    return sorted({*globals(), *_API})
