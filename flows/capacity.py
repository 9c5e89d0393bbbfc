"""The embedding capacity plan for this machine (`vectormill capacity`): no flow, no model loaded."""

from __future__ import annotations

from typing import Any

from vectormill.embedding.settings import EmbeddingSettings


def capacity_plan(settings: EmbeddingSettings) -> tuple[Any, Any]:
    """(the model's footprint, the plan made from it and what NVML reports)."""
    from vectormill.embedding.capacity import model_footprint, plan_for_settings

    footprint = model_footprint(settings.model)
    return footprint, plan_for_settings(settings, footprint)
