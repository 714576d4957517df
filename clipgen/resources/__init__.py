"""Reference data shipped with clipgen (DomainNet classes, ImageNet mapping, class index and class names)."""
