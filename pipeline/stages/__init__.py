"""The DAG's stages, one module per kind; `python -m pipeline <stage>` calls them (pipeline/__main__.py).

Every stage: validate the whole config and its own arguments BEFORE any compute, check its input files,
open one MLflow run, compute, write its declared outputs atomically, close the run. Training stages
checkpoint every epoch under runs/<experiment>/checkpoints/ (never a declared output) and resume from there.
"""
