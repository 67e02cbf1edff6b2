"""torchvision's ImageNet models as ONNX files, for `graphnn bench --workloads torchvision`.

The onnx package's light test copies (tools/bench_onnx.py) are Caffe2 exports of 2017
with every weight 0.02. What users import today comes from `torch.onnx.export` of
torchvision's models: other op patterns (a DenseNet that concatenates all earlier
features at each layer, ReLU6 as Clip, GELU as Erf, LayerNormalization, the attention's
Gather), and weights that are not all alike. `case(arch)` exports one such model with
random weights (drawn with a fixed seed, scaled so activations stay of order 1:
torchvision zero-initialises some heads, whose output would be all zeros), batch 1, at
opset 17, and returns the file with torch's own output as the reference. The file is
kept under the kernel cache's parent directory (torchvision/<arch>-<versions>.onnx), so
a benchmark's processes export each model once.

Needs torch and torchvision (optional peers, never dependencies); `available()` says
whether they are installed.
"""
import importlib.util
import os

# The models of the torchvision workloads, by family: residual, dense, inception,
# mobile (depthwise and squeeze-excitation), grouped, plain, and transformer
ARCHS = ("resnet18", "resnext50_32x4d", "densenet121", "googlenet", "inception_v3",
         "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "mnasnet1_0",
         "shufflenet_v2_x1_0", "squeezenet1_1", "regnet_x_400mf", "alexnet", "vgg11_bn",
         "convnext_tiny", "vit_b_16")
SEED = 0


def available():
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))


def image_size(arch):
    return 299 if arch == "inception_v3" else 224


def build(arch):
    """torchvision's `arch` in eval mode with this module's random weights (the same at
    every call)."""
    import torch
    import torchvision
    model = getattr(torchvision.models, arch)(weights=None).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:  # (a kernel or matrix: scaled by its fan-in)
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):  # (a normalisation's scale)
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return model


def image(arch):
    import numpy as np
    size = image_size(arch)
    return np.random.default_rng(SEED).standard_normal((1, 3, size, size)).astype(np.float32)


def case(arch, directory=None):
    """(path, input name, input, torch's output) of `arch` exported to ONNX."""
    from importlib.metadata import version

    import numpy as np
    from kernels.loader import cache_dir
    directory = directory or os.path.join(os.path.dirname(cache_dir()), "torchvision")
    os.makedirs(directory, exist_ok=True)
    # (named by the versions without importing torch: a process that finds the file
    # never loads it, 0.5 GB and a second or two)
    stem = os.path.join(directory, f"{arch}-torch{version('torch')}-tv"
                                   f"{version('torchvision')}".replace("+", "_"))
    path, saved = stem + ".onnx", stem + ".npz"
    x = image(arch)
    if not (os.path.exists(path) and os.path.exists(saved)):
        import warnings

        import torch
        model = build(arch)
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        part = f"{stem}.{os.getpid()}.part"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (torch.from_numpy(x),), part, opset_version=17,
                                  input_names=["image"], output_names=["logits"],
                                  dynamo=False)
            except TypeError:  # (a torch without the dynamo option)
                torch.onnx.export(model, (torch.from_numpy(x),), part, opset_version=17,
                                  input_names=["image"], output_names=["logits"])
        np.savez(part + ".npz", reference=reference)
        os.replace(part + ".npz", saved)
        os.replace(part, path)  # (the file last: a file present has its reference)
    return path, "image", x, np.load(saved)["reference"]
