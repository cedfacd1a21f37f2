"""Evaluation: accuracy and perplexity of a model or an SPD plan with lm-eval.

evaluate (scoring and result rows, with per-item scores), eval_command (the `eval` command), runtime
(lm-eval on the torchrun runtime), tasks/ (the offline suite built from shipped text), statistics
(paired bootstrap intervals of accuracy drops), store (finished settings on disk, so studies resume),
sweep (accuracy against SPD ratio), scale (the model-size study's summary and figure), plots.

Imports: the core and spd_ref.calibration (the sweep calibrates). Nothing in the core imports it.
"""
