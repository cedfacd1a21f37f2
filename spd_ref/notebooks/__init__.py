"""Helpers of the notebooks in notebooks/, one module per notebook and named after it, plus figures.

communication_cost (01), building_the_spd_block (02), sensitivity_and_calibration (03),
recovering_sensitive_blocks (04), latency_and_accuracy (05); figures (PNG images for all of them).
The notebooks import these so their cells stay short; the logic itself lives in the package.

Imports: anything in spd_ref. Nothing in spd_ref imports this package (only notebooks and tests do).
"""
