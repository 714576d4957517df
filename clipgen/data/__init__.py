"""Data preparation: synthetic DomainNet, captions, mixtures, base datasets."""
