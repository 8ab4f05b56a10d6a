"""Plain PyTorch implementations: the oracle of every kernel. Never imports Triton."""
