"""eldarts: EL-DARTS differentiable architecture search as a YAML-driven tool."""

__version__ = "0.1.0"
