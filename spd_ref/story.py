"""The one namespace notebooks 03, 04 and 05 import (`from spd_ref import story`), so that their cells
stay short (DESIGN.md, Notebooks). The helpers live in one module per notebook, and this one only
gathers their names:
- spd_ref.story_calibration: notebook 03, sensitivity scan, block classes, choice of blocks, the plan;
- spd_ref.story_recovery: notebook 04, B2B and HG on single blocks;
- spd_ref.story_tradeoff: notebook 05, recorded latency, accuracy and the trade-off.
Figures come back as images (spd_ref.notebook_figures), so the executed notebooks store them and read
well as static pages.
"""
from __future__ import annotations

from .story_calibration import (CLASS_COLORS, SELECTIONS, block_ranges, class_summary, compare_selections,
                                plot_selections, plot_sensitivity, selection_blocks, selection_perplexity,
                                zero_shot_plan)
from .story_recovery import heads_by_rank, mse_in_mode, plot_head_grouping, plot_loss_curves, swapped_block
from .story_tradeoff import (OPERATING_COLUMNS, RESULTS, accuracy_table, explorer, frontier, latency_saving,
                             live_gpu_bench, operating_point, plot_frontier, plot_operating, recorded_rows)

__all__ = ["CLASS_COLORS", "SELECTIONS", "block_ranges", "class_summary", "compare_selections", "plot_selections",
           "plot_sensitivity", "selection_blocks", "selection_perplexity", "zero_shot_plan",
           "heads_by_rank", "mse_in_mode", "plot_head_grouping", "plot_loss_curves", "swapped_block",
           "OPERATING_COLUMNS", "RESULTS", "accuracy_table", "explorer", "frontier", "latency_saving",
           "live_gpu_bench", "operating_point", "plot_frontier", "plot_operating", "recorded_rows"]
