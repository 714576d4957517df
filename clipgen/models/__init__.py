"""Models: the open_clip registry plus clipgen's small configurations, layer catalogues, supervised heads."""
