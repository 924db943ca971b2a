"""Resolver strategies for artifacts of earlier runs."""
from __future__ import annotations

from tfx import v1 as tfx


class LatestOrNoneStrategy(tfx.dsl.experimental.LatestArtifactStrategy):
    """The latest artifact of an earlier run, or none on a first run: TFX's
    own strategy reports an empty channel as a resolution error (a traceback
    in the log, and `--from` / `--only` runs refuse to start).

    KubeflowV2DagRunner compiles only TFX's own class, so a compiled pipeline
    uses that one instead (see `create_pipeline`)."""

    def resolve_artifacts(self, store, input_dict):
        return self._resolve(input_dict)
