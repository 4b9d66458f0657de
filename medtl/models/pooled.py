"""The classifier's pooled features: the tensor the head takes, after the backbone and any
weight-free pooling or flattening right after it.

The shift measures (:mod:`medtl.stats.shift`) compare films in this space, at training time
(the trainer's feature summary) and at prediction time (:class:`medtl.run.predictor.Predictor`);
both go through :func:`pooled_tensor`, so they cut the model at the same place, and so does the
head-stage feature cache (:func:`medtl.train.feature_cache.split_head`).

Example:
    >>> dual = with_pooled_features(model)
    >>> scores, features = dual.predict(images)
"""

from __future__ import annotations

import keras

__all__ = ["pooled_tensor", "with_pooled_features"]

# Layers between the backbone and the first trainable head layer with no weights and no
# randomness: the cut moves past them (pooled features are far smaller than feature maps).
_PASS_THROUGH = ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")


def pooled_tensor(model: keras.Model):
    """The symbolic tensor of ``model``'s pooled features.

    Raises:
        ValueError: the model has no layer named ``backbone`` (not built by medtl).

    Example:
        >>> keras.Model(model.inputs, pooled_tensor(model)).predict(x).shape
        (8, 1280)
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise ValueError("the model has no layer named 'backbone' (not built by medtl.models.build_model); "
                         "its pooled features cannot be found") from None
    # The tensor the outer graph feeds onward is the output of the backbone's call node here.
    cut = backbone._inbound_nodes[-1].output_tensors[0]
    users: dict[int, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                users.setdefault(id(t), []).append(layer)
    while True:
        after = users.get(id(cut), [])
        if len(after) != 1 or type(after[0]).__name__ not in _PASS_THROUGH:
            return cut
        outs = [n.output_tensors[0] for n in after[0]._inbound_nodes if any(t is cut for t in n.input_tensors)]
        if not outs:
            return cut
        cut = outs[0]


def with_pooled_features(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s weights that returns ``[scores, pooled features]`` in one pass.

    Raises:
        ValueError: no backbone layer, or the features are not one vector per image.

    Example:
        >>> scores, feats = with_pooled_features(model).predict_on_batch(x)
    """
    cut = pooled_tensor(model)
    if len(cut.shape) != 2:
        raise ValueError(f"the model's backbone output has shape {tuple(cut.shape)}, not one pooled vector per "
                         "image; the shift measures need pooled features")
    return keras.Model(model.inputs, [model.outputs[0], cut], name="with_pooled_features")
