"""mmedpo: clinical-aware multimodal preference optimisation (MMedPO) for medical VLMs.

The library is usable from Python stage by stage; `mmedpo.cli` is a thin layer over it.
"""

__version__ = "0.1.0"
