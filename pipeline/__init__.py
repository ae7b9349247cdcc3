"""Fourier-MBP: a reproducible benchmark for frequency-guided magnitude pruning (Shang et al., ICASSP 2022).

One package per concern, each importing only from those listed before it (README.md: Layout):
errors, config (schema, loading, checks, catalog, layout), planning (budget, resources, plan, dag), infra (io,
tracking, progress, provenance, faults), core (models, masks, frequency, data, train, captured, cost), methods
(the retraining recipes), evaluate (spectral, signature), report (build, claims, verdicts, calibration,
figures, publish, index), stages (the entry points); preflight and __main__ (`python -m pipeline <stage>`).
"""
