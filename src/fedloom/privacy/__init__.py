"""Client-level differential privacy: DP-FedAvg with an accountant from Google's ``dp-accounting``.

``settings`` (the config section, no heavy imports), ``accountant`` (ε from the sampling actually done),
``mechanism`` (clipping and Gaussian noise), ``stage`` (the round's hook). See docs/privacy.md.
"""
