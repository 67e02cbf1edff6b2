"""Metrics as graph pieces built from existing ops (`gn.metrics`).

A metric is a node like the loss, so it compiles INTO the training step and comes back from
the same call as the loss: `gn.compile([loss, acc], updates=...)` costs no extra pass over
the data, and `gn.fit` shows it in the progress bar. Called on NumPy arrays, the same
function computes at once (eager mode).

    acc = gn.metrics.accuracy(logits, y)          # y: integer class ids (batch,)
    acc = gn.metrics.accuracy(p, t, threshold=0.5)  # binary: p and t of the same shape
"""
from . import ops
from .errors import ShapeError, user_location
from .node import Node


def accuracy(scores, labels, threshold=0.5, name="accuracy"):
    """Fraction of correct predictions, a float scalar.

    Multi-class: `scores` (batch, classes) (logits or probabilities) and integer `labels`
    (batch,); a row counts as correct when its label's score is the row's maximum.
    Binary: `scores` and float 0/1 `labels` of the same shape; the prediction is
    `scores > threshold` (0.5 for probabilities, pass 0.0 for logits).
    """
    shape = _shape(scores)
    label_shape = _shape(labels)
    if len(shape) == 2 and len(label_shape) == 1:
        classes = shape[1]
        if classes is None:
            raise ShapeError(f"accuracy: the number of classes of scores {shape} must be known "
                             f"(at {user_location()})")
        label_score = ops.sum(ops.one_hot(labels, classes, scores.dtype) * scores, axis=-1)
        correct = ops.ge(label_score, ops.max(scores, axis=-1))
    elif len(shape) == len(label_shape):
        correct = ops.eq(ops.gt(scores, threshold), labels)
    else:
        raise ShapeError(f"accuracy: scores {shape} and labels {label_shape} match neither "
                         f"(batch, classes) with (batch,) nor equal shapes "
                         f"(at {user_location()})")
    return ops.mean(correct, name=name if isinstance(scores, Node) else None)


def _shape(v):
    return v.shape if isinstance(v, Node) else getattr(v, "shape", ())
