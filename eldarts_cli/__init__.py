"""eldarts: EL-DARTS differentiable architecture search as a YAML-driven tool."""

import os

# OpenMP threads that spin while waiting make a busy CPU (a shared machine, a
# second job) collapse: measured here, a quickstart search step took 28 s with
# spinning threads and 0.5 s without. Set before torch loads its OpenMP; a
# value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
