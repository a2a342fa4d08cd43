"""Training stages, each one file read top to bottom (setup -> train -> save), on ``accelerate``.

- ``stage1.py``: pixel grounding (``train_stage1``), phases ``projector`` and ``lora``;
- ``merge.py``: LoRA merged into the MLLM (``merge_lora_run``);
- ``runs.py``: the run-folder conventions every stage shares: settings, metrics log, atomic
  checkpoints, resume, the final model folder.

Importing this package imports nothing heavy; import the modules you need.
"""
