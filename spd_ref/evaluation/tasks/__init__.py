"""lm-eval tasks: the offline suite built from shipped text, and the paper's suite by its lm-eval names.

The YAML files in this folder are lm-eval task configs; `TaskManager(include_path=TASKS_DIR)` finds
them. Their datasets are built in memory by the `custom_dataset` functions in `shipped.py` (gensim's
test data) and `wiki.py` (held-out Wikipedia articles from `spd_ref.calibration.data`). README.md documents each
task: source, licence, size, chance level and how items are built.
"""
from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

# Offline suite, runnable with no hub. Chance level of each accuracy task (README.md); spd_lambada is
# open-vocabulary greedy prediction, so its chance level is ~0; spd_wikippl has no accuracy.
OFFLINE_TASKS = ("spd_analogy", "spd_polarity", "spd_lambada", "spd_hellaswag", "spd_wikippl")
CHANCE = {"spd_analogy": 0.25, "spd_polarity": 0.5, "spd_lambada": 0.0, "spd_hellaswag": 0.25}

# The paper's zero-shot suite (METHOD.md section 6) by lm-eval's own task names: needs a dataset hub.
PAPER_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "lambada_openai", "piqa", "sciq", "winogrande")


def material() -> dict[str, int]:
    """How many items each offline accuracy task can build from the text that ships (its builder with no
    cap; the defaults use 400, 200, 250 and 400 of them): what more items could ever add."""
    from spd_ref.evaluation.tasks import shipped, wiki

    everything = 10 ** 9
    return {"spd_analogy": len(shipped.analogy_items(everything)),
            "spd_polarity": len(shipped.polarity_items(everything)),
            "spd_lambada": len(wiki.lambada_items(everything)),
            "spd_hellaswag": len(wiki.hellaswag_items(everything))}
