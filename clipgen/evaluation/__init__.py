"""Zero-shot and supervised evaluation, metrics, and summaries across runs."""
