"""Victim and surrogate architectures behind one registry.

Every factory takes ``in_channels``, ``num_classes`` and ``image_size`` (height; ``image_width`` too where the
layers depend on it) and returns a ``torch.nn.Module``
mapping float images in [0, 1] to logits - or, for the classical victims (``svm-linear``, ``svm-rbf``,
``random-forest``), a :class:`~unlearnable.models.classical.PixelClassifier` that the trainer fits on flattened
pixels. Create one with :func:`create_model`.
"""
from __future__ import annotations

from ..params import height_width
from ..registry import Registry

MODELS: Registry = Registry("model")

_M = "unlearnable.models"
MODELS.add("cnn", f"{_M}.small:cnn", "small 4-conv CNN with batch norm (the CPU default victim)")
MODELS.add("convnet", f"{_M}.small:convnet", "airbench-style net: 2x2 stem + 3 conv groups (width, default 64)")
MODELS.add("lenet", f"{_M}.small:lenet", "the official DeepConfuse MNIST classifier (two 5x5 convs, 500 hidden)")
MODELS.add("linear", f"{_M}.small:linear", "a linear classifier on the flattened pixels")
MODELS.add("resnet18", f"{_M}.zoo:resnet18", "ResNet-18 (torchvision; 3x3 stride-1 stem for small images)")
MODELS.add("resnet50", f"{_M}.zoo:resnet50", "ResNet-50 (torchvision; 3x3 stride-1 stem for small images)")
MODELS.add("vgg11", f"{_M}.zoo:vgg11", "VGG-11 with batch norm (torchvision; linear head for small images)")
MODELS.add("vgg16", f"{_M}.zoo:vgg16", "VGG-16 with batch norm (torchvision; linear head for small images)")
MODELS.add("mobilenetv2", f"{_M}.zoo:mobilenetv2", "MobileNetV2 (torchvision; stride-1 stem for small images)")
MODELS.add("densenet121", f"{_M}.zoo:densenet121", "DenseNet-121 (torchvision; 3x3 stride-1 stem for small images)")
MODELS.add("svm-linear", f"{_M}.classical:svm_linear", "scikit-learn linear SVM on flattened pixels (victim only)")
MODELS.add("svm-rbf", f"{_M}.classical:svm_rbf",
           "scikit-learn RBF SVM, C=200, gamma=0.01, on a 10k subset of flattened pixels (victim only)")
MODELS.add("random-forest", f"{_M}.classical:random_forest",
           "scikit-learn random forest, 100 trees, on flattened pixels (victim only)")
CLASSICAL = ("svm-linear", "svm-rbf", "random-forest")  # fitted by scikit-learn; no gradients, no surrogates


def create_model(name: str, in_channels: int = 1, num_classes: int = 10, image_size: int | tuple[int, int] = 28,
                 **kwargs):
    """A fresh model by registry name (``cnn``, ``resnet18``...). Unknown names raise a clear error.

    ``image_size``: the side of square images, or (height, width). Factories get the height; those whose layers
    depend on the width too (``linear``, ``lenet``: a dense layer on the flattened map; ``vgg*``: the shorter side
    decides its last pool) also get ``image_width``."""
    import inspect

    from ..errors import UnlearnableError

    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    h, w = height_width(image_size)
    if w != h and "image_width" in params:
        kwargs["image_width"] = w
    if num_classes < 1 or in_channels < 1:
        raise UnlearnableError(f"model {name} needs one or more classes and input channels, got {num_classes} and "
                               f"{in_channels}")
    known = set(params) - {"in_channels", "num_classes", "image_size"}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [] if open_ended else sorted(set(kwargs) - known)
    if unknown:  # a TypeError from inside the factory otherwise
        raise UnlearnableError(f"model {name} has no option {', '.join(unknown)}"
                               + (f" (it takes {', '.join(sorted(known))})" if known else " (it takes none)"))
    model = factory(in_channels=in_channels, num_classes=num_classes, image_size=h, **kwargs)
    if min(h, w) < SAFE_SIDE and name not in CLASSICAL:
        _check_input_size(model, name, in_channels, h, w)
    return model


SAFE_SIDE = 32  # every registered network takes images this large; smaller ones are tried once at creation


def _check_input_size(model, name: str, channels: int, h: int, w: int) -> None:
    """One forward pass of two blank images (eval mode, no gradients, no random draws): a network whose pooling
    shrinks small images to nothing says so in one line here, not in a traceback from inside training."""
    import torch

    from ..errors import UnlearnableError

    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, channels, h, w))
    except RuntimeError as e:
        raise UnlearnableError(f"model {name!r} cannot take {h} x {w} images (its pooling leaves nothing of them); "
                               "use larger images or another model (linear takes any size)") from e
    finally:
        model.train(was_training)
