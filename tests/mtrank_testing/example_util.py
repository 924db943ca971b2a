"""Reading tf.Examples back in tests."""


def feature_kinds(example) -> dict:
    """{feature: (kind, values)} of a tf.Example, for comparing mappings."""
    result = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        result[name] = (kind, list(getattr(feature, kind).value))
    return result
