"""tlpipe step code: what runs inside each pipeline step's container.

`components.core` is the pure library (no `kfp` import); `components.steps` holds the thin KFP
component wrappers around it.
"""

__version__ = "0.1.0"
