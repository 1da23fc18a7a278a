"""The pure transfer-learning core: configs, data, models, training, evaluation and export.

Nothing here imports `kfp`; every function can be called and tested on a CPU with tiny inputs.
"""
