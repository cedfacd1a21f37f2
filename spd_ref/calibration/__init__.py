"""Calibration: from a model to an SPD plan (METHOD.md s.3-5).

data (calibration and held-out text), activations (the cache of every block's TP inputs), sensitivity
(the back-to-front scan and the three classes), noise (the scan's bootstrap intervals), distill
(block-to-block distillation, B2B), headgroup (head-grouping initialization, HG), pairing (HG's MLP
pairing by the block's error), recover (HG and B2B on the chosen blocks), calibrate (the `calibrate`
command, which writes a plan), resume (its checkpoint: an interrupted run resumes).

Imports: the core (spd_ref.*) only. Nothing in the core imports this package.
"""
