"""The built-in datasets' names and the aliases accepted for them: the one list, read by the data pipeline, the
recipes and the model cards.

Standard library only: the command line loads this file by path to resolve a recipe before torch is imported.
"""

#: alias (lower case) -> the built-in dataset's canonical name
DATASET_ALIASES = {
    "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
    "zalando-datasets/fashion_mnist": "fashion_mnist",
    "shapes": "shapes", "dsprites": "shapes",
    "photos": "photos", "photo_crops": "photos",
}


def canonical_dataset(name) -> str:
    """The canonical name of a built-in dataset (`fashion-mnist` -> `fashion_mnist`); any other name unchanged."""
    key = str(name).strip()
    return DATASET_ALIASES.get(key.lower(), key)
