"""Dataset presets for `raydm2 init`: the settings a user of that kind of data would start from."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # 28x28 grey digits/clothes: the small CNN, and FGSM epsilon 2/255 (SPEC section 4).
    "mnist": {
        "classes": [str(i) for i in range(10)],
        "model": {"arch": "small_cnn"},
        "image": {"size": 28, "channels": 1},
        "train": {"epsilon": 2 / 255},
        # λ = 0.7 had the best AUBC of λ 0.5-0.9 on a validation split carved from the MNIST protocol's train
        # subset, never its test subset (docs/benchmarks.md, "λ chosen on a validation split"). Fashion-MNIST and
        # CIFAR-10 use SPEC's 0.8, which no validation run has tuned.
        "strategy": {"lam": 0.7},
    },
    "fashion_mnist": {
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot"],
        "model": {"arch": "small_cnn"},
        "image": {"size": 28, "channels": 1},
        "train": {"epsilon": 2 / 255},
        # spread 4 (k-means over the top 4·B mixes; ours, beyond the paper) had a higher AUBC than the plain top-B
        # on a validation split carved from the Fashion-MNIST protocol's train subset, never its test subset
        # (docs/benchmarks.md, "`dm2.spread` on a validation split"). λ stays SPEC's 0.8.
        "strategy": {"spread": 4},
    },
    "cifar10": {
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "model": {"arch": "resnet18", "cifar_stem": True},
        "image": {"size": 32, "channels": 3},
        "train": {"epsilon": 8 / 255},
    },
}
