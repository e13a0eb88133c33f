"""lanmt: latent-variable non-autoregressive machine translation (LaNMT).

Keep this module free of heavy imports: `lanmt --help` must not load torch or ray.
"""

import os

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it)

# OpenMP threads that spin only briefly before they sleep: on a machine shared with other
# work, threads that spin for long wait for descheduled ones and decoding slows down several
# times (issue 12); threads that sleep at once pay a wake-up at every parallel region, which
# made CTranslate2's greedy search 5x slower at batch 1 (52.9 ms against 10.4 with a spin of
# 20,000, on 2 cores). Read when torch (or CTranslate2) loads, so set here, before either is
# imported; values in the environment win.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # GNU OpenMP: spins before sleeping
