"""Evaluation: accuracy and perplexity of a model or an SPD plan with lm-eval.

evaluate (scoring and result rows), eval_command (the `eval` command), runtime (lm-eval on the torchrun
runtime), tasks/ (the offline suite built from shipped text), sweep (accuracy against SPD ratio),
plots (the sweep's figure).

Imports: the core and spd_ref.calibration (the sweep calibrates). Nothing in the core imports it.
"""
