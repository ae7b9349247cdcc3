"""Fourier-MBP: a reproducible benchmark for frequency-guided magnitude pruning (Shang et al., ICASSP 2022).

Modules, one job each: config (schema), data (prepare), models (registry), masks (MBP), frequency
(filters, radius schedule), train (the one training loop), methods (retraining recipes), spectral
(band-limited accuracy, heat maps), tracking (MLflow), stages (entry points), report, dag (dvc.yaml export).
"""
