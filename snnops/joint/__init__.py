"""Joint A-SNN: an ANN and an SNN trained together, sharing factorized weights, the ANN
teaching the SNN through branch heads at every stage (see ``docs/joint.md``)."""
from ..nn.wft import DualBatchNorm2d, WFTConv2d, WFTLinear, wft_parameter_report
from .loss import LOSS_FORMS, JointLoss
from .networks import BACKBONES, JOINT_LIF, DualNet, DualOutput, build_network

__all__ = ["WFTConv2d", "WFTLinear", "DualBatchNorm2d", "wft_parameter_report", "JointLoss", "LOSS_FORMS",
           "BACKBONES", "JOINT_LIF", "DualNet", "DualOutput", "build_network"]
