"""The ledger: a project's validated configuration (`project.yaml`), its rounds and their state machine,
selections, labels (imported from annotators' files), checkpoints' places, and the one-writer lock."""
