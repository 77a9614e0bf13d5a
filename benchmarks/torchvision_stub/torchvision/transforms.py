"""Compose, CenterCrop, RandomCrop, RandomHorizontalFlip and Lambda on [..., H, W] tensors."""

import torch


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class Lambda:
    def __init__(self, function):
        self.function = function

    def __call__(self, x):
        return self.function(x)


def _size(size):
    return (size, size) if isinstance(size, int) else tuple(size)


class CenterCrop:
    def __init__(self, size):
        self.height, self.width = _size(size)

    def __call__(self, x):
        top = (x.shape[-2] - self.height) // 2
        left = (x.shape[-1] - self.width) // 2
        return x[..., top: top + self.height, left: left + self.width]


class RandomCrop(CenterCrop):
    def __call__(self, x):
        top = int(torch.randint(0, x.shape[-2] - self.height + 1, (1,)))
        left = int(torch.randint(0, x.shape[-1] - self.width + 1, (1,)))
        return x[..., top: top + self.height, left: left + self.width]


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, x):
        return x.flip(-1) if torch.rand(1).item() < self.p else x
