"""LitE-SNN deployment: decoded CompConvs on the bit-serial spike x low-bit weight kernel."""
import pytest
import torch

from snnops.lite.compconv import CompConv2d
from snnops.lite.decode import FixedNetwork, decode
from snnops.lite.search_space import SearchNetwork


pytestmark = pytest.mark.usefixtures("one_thread")


def _spikes(*shape, p=0.3):
    return (torch.rand(*shape) < p).float()


def _tiny_net():
    return SearchNetwork(channels=2, num_classes=3, layers=3, steps=2, t_max=3, keep_ratio=0.5)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)])
def test_lowbit_conv_equals_float_math_on_quantized_weights(bits, kernel_size, stride, padding, cpu_isa):
    from snnops.lite.deploy import LowBitSpikeConv2d, QuantizedFloatConv2d
    conv = CompConv2d(5, 7, kernel_size, stride=stride, padding=padding, bits=(bits,), keep_ratio=0.3)
    exact = QuantizedFloatConv2d(conv)
    # the deployed codes are the training quantizer's, mask included
    assert torch.equal(exact.dequantized_weight(torch.float32), conv.quantized_weight())
    x = _spikes(3, 2, 5, 9, 7)
    y = LowBitSpikeConv2d(conv)(x)
    assert torch.equal(y, exact(x))
    # float32 training math rounds its partial sums: equal to float32 tolerance
    assert torch.allclose(y, conv(x).detach(), rtol=0, atol=1e-5)
    assert LowBitSpikeConv2d(conv)(x[0]).shape == y[0].shape


def _trained_fixed_net(seed=0):
    torch.manual_seed(seed)
    net = _tiny_net()
    with torch.no_grad():
        for _, m in net.compconvs():
            m.beta.normal_()
        net.psi.copy_(torch.tensor([0.0, 0.0, 1.0]))
    fixed = FixedNetwork(decode(net), channels=4, num_classes=3, auxiliary=True)
    fixed.train()
    with torch.no_grad():
        for _ in range(3):  # populate the BN running statistics
            fixed(torch.randn(16, 1, 8, 8))
    return fixed.eval()


def test_deployed_network_equals_float_math_on_quantized_weights(cpu_isa):
    from snnops.lite.deploy import DeployedNetwork
    fixed = _trained_fixed_net()
    deployed = DeployedNetwork(fixed)
    assert deployed.num_lowbit_layers == len(fixed.compconvs()) > 0
    x = torch.randn(24, 1, 8, 8)
    logits = deployed(x)
    assert logits.shape == (3, 24, 3)
    assert torch.equal(logits, deployed.exact_reference()(x))
    with torch.no_grad():
        ref = fixed(x)
    assert torch.equal(logits.mean(0).argmax(-1), ref.mean(0).argmax(-1))
    assert torch.allclose(logits, ref, atol=1e-4)


def test_lowbit_conv_empty_and_bad_input():
    from snnops.lite.deploy import DeployedNetwork, LowBitSpikeConv2d
    conv = LowBitSpikeConv2d(CompConv2d(3, 4, 3, padding=1, bits=(2,), keep_ratio=0.5))
    assert conv(torch.zeros(0, 3, 5, 5)).shape == (0, 4, 5, 5)
    with pytest.raises(ValueError, match="channels"):
        conv(torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match="spikes"):
        conv(torch.zeros(3, 5, 5))
    with pytest.raises((RuntimeError, ValueError), match="0 or 1"):  # the kernel's spike check
        conv(torch.full((1, 3, 5, 5), 0.5))
    with pytest.raises(TypeError, match="CompConv2d"):
        LowBitSpikeConv2d(torch.nn.Conv2d(3, 4, 3))
    assert DeployedNetwork(torch.nn.Sequential(torch.nn.Identity())).num_lowbit_layers == 0
