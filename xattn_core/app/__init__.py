"""The applications over the engine (**need diffusers**): the reference pipeline, the command line and the batch.

- ``diffusers_pipeline``: end-to-end transfer on a diffusers Stable Diffusion pipeline (load, encode, invert,
  generate, write);
- ``cli``, ``cli_common``: ``python -m xattn_core transfer`` and what the subcommands share (setting flags,
  device, phase progress);
- ``batch_csv``, ``batch``, ``batch_cli``, ``contact_sheet``: the ``batch`` command: its pairs file, the per-pair
  work with the inversion cache and resuming, the command itself, ``index.html`` and ``results.csv``;
- ``batch_ray``: ``batch --ray``, the same per-pair work as a Ray Data job (**needs ray**, imported only then);
- ``scores``: optional DINO structure distance and appearance similarity (**needs transformers** to load a model).

Nothing in the engine (the parent package) imports from here.
"""
