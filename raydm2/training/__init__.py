"""Training: DM2-AT (clean + FGSM loss) on Ray Train with DDP, the same epoch loop in one process for simulations,
the labeled and test data feeding both, and Algorithm 2's stored adversarial counterparts."""
