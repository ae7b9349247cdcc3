"""The retraining methods, one registry: each turns (the trained dense network, its MBP mask) into a Recipe.

One module per family (pipeline/config/catalog.py says which method is which, whom it answers and what it costs):
- oneshot.py: prune once, then train (finetune, finetune_layerwise, random, lr_rewind, reinit);
- iterative.py: the mask changes during training (imp, lth, lth_init, lrr chains; gmp);
- distill.py: the MBP mask retrained against the dense teacher (kd, fourier_kd and its controls).
A method added from outside (catalog.extend) brings its recipe in its catalogue record: recipe_for.
"""
from __future__ import annotations

from pipeline.config.catalog import CATALOG
from pipeline.methods import distill, iterative, oneshot


METHODS = {name: getattr(mod, name) for mod in (oneshot, iterative, distill) for name in dir(mod)
           if name in CATALOG and CATALOG[name].source == "built-in"}
assert set(METHODS) == {n for n, m in CATALOG.items() if m.source == "built-in"}, set(CATALOG) ^ set(METHODS)


def recipe_for(name: str):
    """The recipe of a method, ctx -> Recipe: a built-in's from this package, an added one's from its record."""
    return METHODS[name] if name in METHODS else CATALOG[name].recipe
