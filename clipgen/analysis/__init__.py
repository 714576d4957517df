"""Analyses that read an activation store and never load a model: CKA, SAE feature sharing, embeddings."""
