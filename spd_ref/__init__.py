"""spd_ref: a reference implementation of Sync-Point Drop (SPD, ICML 2025) for tensor-parallel LLMs."""
__version__ = "0.1.0"
