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
- ``helpers.scoring``  the competition's aesthetic judge: batched, robust (01_scoring)
- ``helpers.score``    the scoring command line: ``python -m helpers.score FOLDER`` (01_scoring)
- ``helpers.plots``    score grids, histograms, side-by-side folders (01_scoring)
- ``helpers.dataset``  fetch (ModelScope or offline set), captions, the training folder (02_data)
- ``helpers.dj``       run Data-Juicer recipes, read their stats, the kept/dropped report (02_data)
- ``helpers.storyboard``  storyboard files, validation, LLM table parser (04_comic_strip)
- ``helpers.panels``   panels from a storyboard: seeds, manifest, resume (04_comic_strip)
- ``helpers.layout``   the strip: grid, gutters, Chinese captions (04_comic_strip)
- ``helpers.jury``     style consistency and the jury sheet (04_comic_strip, 07_experiments)
- ``helpers.bundle``   reproducibility bundle and its check (04_comic_strip)
- ``helpers.scale``    Data-Juicer on a Ray cluster (06_scale_out)
- ``helpers.agreement``      SRCC/PLCC against ratings; a synthetic ranked set (05_beyond_scoring)
- ``helpers.aesthetic_v25``  Aesthetic Predictor V2.5 scorer (05_beyond_scoring)
- ``helpers.reward``         CLIP-embedding preference reward, pairwise loss (05_beyond_scoring)
- ``helpers.vlm``            Qwen2-VL level scorer, Q-Align style (05_beyond_scoring)
- ``helpers.service``        FastAPI scoring service + load test (05_beyond_scoring)
- ``helpers.extra_models``   real-or-offline resolution for the models above (05_beyond_scoring)

Nothing heavy is imported here, so ``import helpers`` is instant.
"""

__version__ = "0.1.0"
