"""Imported first by each entry point, before torch: idle OpenMP threads sleep instead of spinning.

On a busy shared CPU, spinning OpenMP workers made tiny-model runs 4-60x slower.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
