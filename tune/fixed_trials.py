"""A Ray Tune searcher that hands out a fixed list of trial configurations, each exactly as
given: the finalists' re-runs and the seed baselines inside a search's experiment.

Ray's BasicVariantGenerator fills its `points_to_evaluate` into one shared param space, so
configurations with different keys (a 3-stage and a 4-stage network) would get each other's
keys as None; here every trial's config is its own dict, nothing added."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from tune.study import METRIC


class FixedTrials(Searcher):
    """Suggests `configs` in order, then says it has finished. Its state is plain JSON (how
    many were handed out), so a restored experiment never runs one twice."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.configs = [dict(c) for c in configs]
        self.handed_out = 0

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return (metric in (None, METRIC)) and (mode in (None, "max"))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.handed_out >= len(self.configs):
            return Searcher.FINISHED
        config = self.configs[self.handed_out]
        self.handed_out += 1
        return dict(config)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(
            json.dumps({"configs": self.configs, "handed_out": self.handed_out})
        )

    def restore(self, checkpoint_path: str) -> None:
        saved = json.loads(Path(checkpoint_path).read_text())
        self.configs, self.handed_out = saved["configs"], int(saved["handed_out"])
