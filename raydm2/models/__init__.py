"""Models: the registry and factory (every model is a `Classifier` taking [0,1] pixels, with penultimate features
and one linear head), the checkpoint format, FGSM and the DM2-AT loss, and device choice."""
