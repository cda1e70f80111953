"""MS-ResNet spiking networks in dense / STT / PTT / HTT form (TT-SNN)."""
from .blocks import BACKENDS, CONV_KINDS, NeuronConfig
from .ms_resnet import (DEFAULT_RANKS, MODELS, MSResNet, build, convert_backend, merge, ms_resnet18,
                        ms_resnet34)

__all__ = ["MSResNet", "ms_resnet18", "ms_resnet34", "build", "merge", "convert_backend", "MODELS",
           "DEFAULT_RANKS", "NeuronConfig", "BACKENDS", "CONV_KINDS"]
