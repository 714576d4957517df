"""clipgen: reproduce and extend "When and How Does CLIP Enable Domain and Compositional Generalization?".

The library is importable without the CLI; heavy dependencies (torch, open_clip, umap) are imported
inside the functions that need them, so ``import clipgen`` and ``clipgen --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
