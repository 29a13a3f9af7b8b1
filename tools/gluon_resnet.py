"""A Gluon ResNet-50 v1.5 (HybridBlocks), the peer that ``tools/bench_train.py`` measures the symbolic toolkit against.

Same architecture as ``resnet.py`` (stride on the 3x3 conv of each downsampling bottleneck, 25,557,032 parameters
with 1000 classes), written the way a Gluon user would, and trained with a hybridized (static_alloc, static_shape)
autograd loop. The Gluon model zoo has no v1.5 net: its ``resnet50_v1`` puts the stride on the first 1x1, which costs
fewer FLOPs, so the benchmark shows it only as a reference line.
"""
from __future__ import annotations

from mxnet.gluon import HybridBlock, nn


class BottleneckV15(HybridBlock):
    def __init__(self, channels: int, stride: int, downsample: bool, **kwargs):
        super().__init__(**kwargs)
        mid = channels // 4
        self.body = nn.HybridSequential()
        self.body.add(nn.Conv2D(mid, 1, 1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
                      nn.Conv2D(mid, 3, stride, 1, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
                      nn.Conv2D(channels, 1, 1, use_bias=False), nn.BatchNorm())
        self.downsample = None
        if downsample:
            self.downsample = nn.HybridSequential()
            self.downsample.add(nn.Conv2D(channels, 1, stride, use_bias=False), nn.BatchNorm())

    def hybrid_forward(self, F, x):
        residual = self.downsample(x) if self.downsample is not None else x
        return F.Activation(self.body(x) + residual, act_type="relu")


class ResNet50V15(HybridBlock):
    def __init__(self, classes: int = 1000, **kwargs):
        super().__init__(**kwargs)
        self.features = nn.HybridSequential()
        self.features.add(nn.Conv2D(64, 7, 2, 3, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
                          nn.MaxPool2D(3, 2, 1))
        for stage, (units, channels) in enumerate(zip((3, 4, 6, 3), (256, 512, 1024, 2048))):
            for unit in range(units):
                stride = 2 if unit == 0 and stage > 0 else 1
                self.features.add(BottleneckV15(channels, stride, downsample=unit == 0))
        self.features.add(nn.GlobalAvgPool2D(), nn.Flatten())
        self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))
