"""Shared helpers for the Kolors LoRA story course.

Small modules, one concern each; a notebook imports the few functions it needs:

- ``helpers.paths``    where the kit keeps models and outputs
- ``helpers.io``       atomic writes, never-overwrite output paths
- ``helpers.models``   resolve real weights, or build the offline random set (00_setup)
- ``helpers.offline``  how the offline random set is built (same classes, same layout)
- ``helpers.kolors``   load the Kolors pipeline through DiffSynth's ModelManager
- ``helpers.system``   machine check: versions, device, memory, disk (00_setup)
- ``helpers.course``   run every notebook headless (``make course``)
- ``helpers.cache``    cached conditioning: captions and images encoded once (03_train_lora)
- ``helpers.train``    LoRA training on DiffSynth's trainer, resumable (03_train_lora)
- ``helpers.lora``     LoRA files with their metadata: save, apply/scale/fuse, export (03)
- ``helpers.share``    upload a LoRA, model card and samples to ModelScope, or dry-run it (03)

Nothing heavy is imported here, so ``import helpers`` is instant.
"""

__version__ = "0.1.0"
