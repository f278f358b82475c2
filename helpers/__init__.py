"""Shared helpers for the Kolors LoRA story course.

Small modules, one concern each; a notebook imports the few functions it needs:

- ``helpers.paths``    where the kit keeps models and outputs
- ``helpers.io``       atomic writes, never-overwrite output paths
- ``helpers.models``   resolve real weights, or build the offline random set (00_setup)
- ``helpers.offline``  how the offline random set is built (same classes, same layout)
- ``helpers.kolors``   load the Kolors pipeline through DiffSynth's ModelManager
- ``helpers.system``   machine check: versions, device, memory, disk (00_setup)
- ``helpers.course``   run every notebook headless (``make course``)
- ``helpers.agreement``      SRCC/PLCC against ratings; a synthetic ranked set (05_beyond_scoring)
- ``helpers.aesthetic_v25``  Aesthetic Predictor V2.5 scorer (05_beyond_scoring)
- ``helpers.reward``         CLIP-embedding preference reward, pairwise loss (05_beyond_scoring)
- ``helpers.vlm``            Qwen2-VL level scorer, Q-Align style (05_beyond_scoring)
- ``helpers.service``        FastAPI scoring service + load test (05_beyond_scoring)
- ``helpers.extra_models``   real-or-offline resolution for the models above (05_beyond_scoring)

Nothing heavy is imported here, so ``import helpers`` is instant.
"""

__version__ = "0.1.0"
