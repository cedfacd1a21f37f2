"""Calibration: from a model to an SPD plan (METHOD.md s.3-5).

data (calibration and held-out text), sensitivity (the back-to-front scan and the three classes),
distill (block-to-block distillation, B2B), headgroup (head-grouping initialization, HG), calibrate
(the `calibrate` command, which writes a plan), resume (its checkpoint: an interrupted run resumes).

Imports: the core (spd_ref.*) only. Nothing in the core imports this package.
"""
