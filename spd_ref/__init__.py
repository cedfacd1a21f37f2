"""spd_ref: a reference implementation of Sync-Point Drop (SPD, ICML 2025) for tensor-parallel LLMs.

The core (this folder) reads in one sitting: partition (who owns which heads and MLP columns), block
(the TP and SPD block equations), tp (process groups and the sync point), hf (simulated TP on a
transformers model), model + shards (the torchrun runtime), plan (the calibrate -> deploy hand-off),
launch, generate, models (the offline model registry and loading), and the entry points __main__ and
demo. Subpackages: kernels/, calibration/, evaluation/, latency/, notebooks/ (each __init__ says what it
holds).

Imports flow one way: kernels <- core <- calibration, evaluation, latency <- notebooks. kernels imports
nothing from spd_ref; the other core modules import no subpackage but kernels; only the entry points
(__main__, demo) reach into the others, to run their commands.
"""
__version__ = "0.1.0"
