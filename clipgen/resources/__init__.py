"""Reference data shipped with clipgen (DomainNet classes, ImageNet mapping and class index)."""
