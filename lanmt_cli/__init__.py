"""lanmt: latent-variable non-autoregressive machine translation (LaNMT).

Keep this module free of heavy imports: `lanmt --help` must not load torch or ray.
"""

__version__ = "0.1.0"  # the one version source (pyproject.toml reads it)
