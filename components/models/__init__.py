"""Networks and how they are run: the backbone registry, attention blocks, test-time views, batched prediction."""
