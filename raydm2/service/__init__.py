"""What users run: the CLI and its commands, round orchestration over the ledger, Ray job entrypoints and the
scheduler that submits them, reports, simulations and the demo."""
