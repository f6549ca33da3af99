"""One description per shipped workflow: NN_<what it shows>.py, read by scripts/build_workflows.py.

A description is a small module with three names, and a fourth where its model needs a newer ComfyUI:

- ``NAME``: the workflow's file name in workflows/ (and workflows/api/), which is its template card's title; a
  plain string, as scripts/workflow_files.py reads it without importing the module. The NN_ prefix of the module
  orders the workflows and matches NAME's number.
- ``NOTE``: the Markdown of its "Read me" note, the graph's first node.
- ``build(g)``: adds the rest of the nodes to ``g`` (a workflow_graph.Graph), mostly through the shared chain of
  scripts/workflow_chain.py (loaders, prompts, images, inversions, sampler, outputs) and ``g.add``/``g.link``
  for the nodes only this workflow has; ``pos`` is where a node goes when nothing is in the way.
- ``OLDEST_COMFYUI`` (absent: every release): the oldest of the ComfyUI releases the tiers run that has its model
  ("0.9.2" for Flux.2 and Z-Image), a plain string read as NAME is. The static, ComfyUI and browser tiers check
  the workflow against that release and later ones only (workflow_files.workflows_for).

Adding a workflow is adding a module here (and its card in scripts/make_thumbnails.py). Model files it names that
no workflow named before go into scripts/workflow_files.py with their download links (MODEL_SOURCES), a loader
for a new model family into workflow_chain.py, and inputs several workflows share into sample_inputs.py.
"""
