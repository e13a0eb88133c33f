"""lanmt: latent-variable non-autoregressive machine translation (LaNMT).

Keep this module free of heavy imports: `lanmt --help` must not load torch or ray.
"""

import os

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it)

# OpenMP threads that sleep when idle instead of spinning: on a machine shared with other
# work, spinning threads wait for descheduled ones and decoding slows down several times
# (issue 12). Read when torch (or CTranslate2) loads, so set here, before either is
# imported; OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
