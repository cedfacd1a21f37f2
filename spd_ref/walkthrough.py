"""The one namespace notebooks 01 and 02 import (`from spd_ref import walkthrough`), so that their cells
stay short (DESIGN.md, Notebooks). The helpers live in one module per notebook, and this one only
gathers their names:
- spd_ref.walkthrough_cost: notebook 01, communication cost (measurements, ceiling, decode cost model);
- spd_ref.walkthrough_block: notebook 02, building the SPD block rank by rank (and its pitfalls);
- spd_ref.notebook_figures: figures as PNG images (shared with spd_ref.story).
"""
from __future__ import annotations

from .notebook_figures import as_image, show_figure
from .walkthrough_block import (BlockPieces, block_errors, block_output, block_pieces, exactness_checks,
                                pitfall_table, plot_block_errors, random_llama, relative_error,
                                wrong_spd_bias_on_every_rank, wrong_spd_residual_on_every_rank)
from .walkthrough_cost import (COST_COLUMNS, REFERENCE, DecodeCostModel, ceiling_table, cost_explorer,
                               fit_cost_model, in_model_sync_us, live_allreduce, load_recorded, plot_cost_model,
                               print_fits)

__all__ = ["as_image", "show_figure",
           "BlockPieces", "block_errors", "block_output", "block_pieces", "exactness_checks", "pitfall_table",
           "plot_block_errors", "random_llama", "relative_error", "wrong_spd_bias_on_every_rank",
           "wrong_spd_residual_on_every_rank",
           "COST_COLUMNS", "REFERENCE", "DecodeCostModel", "ceiling_table", "cost_explorer", "fit_cost_model",
           "in_model_sync_us", "live_allreduce", "load_recorded", "plot_cost_model", "print_fits"]
