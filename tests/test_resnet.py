"""ResNet-18 backbones: shapes, layer units, masked parameters, mask gating, plain/masked parity."""

import pytest
import torch

from clrepro.backbones.masks import parameter_wise
from clrepro.backbones.resnet import HATMaskResNet18, ResNet18, ResNetConfig
from clrepro.registry import BACKBONES

LAYERS = ["conv1"] + [f"conv{s}x.{b}.conv{c}" for s in range(2, 6) for b in range(2) for c in (1, 2)]
CHANNELS = {"conv1": 64, **{l: 64 * 2 ** (int(l[4]) - 2) for l in LAYERS[1:]}}
SHORTCUTS = ["body.conv3x.0.shortcut.weight", "body.conv4x.0.shortcut.weight", "body.conv5x.0.shortcut.weight"]


@pytest.fixture(scope="module")
def masked():
    torch.manual_seed(0)
    return HATMaskResNet18((3, 32, 32), ResNetConfig())


def test_registry_finds_both():
    assert BACKBONES.get("resnet18") is ResNet18
    assert BACKBONES.get("hat_resnet18") is HATMaskResNet18
    assert HATMaskResNet18.plain_twin == "resnet18"


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
@pytest.mark.parametrize("cls", [ResNet18, HATMaskResNet18])
def test_output_shape(cls, shape):
    net = cls(shape, ResNetConfig())
    x = torch.randn(2, *shape)
    out = net(x, net.hat.ones()) if net.masked else net(x)
    assert net.output_dim == 512
    assert out.shape == (2, 512)


def test_batch_norm_variant_runs():
    net = HATMaskResNet18((3, 32, 32), ResNetConfig(batch_norm=True))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 17
    assert net(torch.randn(2, 3, 32, 32), net.hat.ones()).shape == (2, 512)


def test_layer_units(masked):
    assert list(masked.hat.layer_units) == LAYERS
    assert len(LAYERS) == 17
    assert masked.hat.layer_units == CHANNELS
    assert CHANNELS["conv5x.1.conv2"] == 512 and CHANNELS["conv3x.0.conv1"] == 128
    for l, n in CHANNELS.items():
        assert masked.hat.embedding(l).shape == (n,)


def test_masked_parameters_cover_weighted_convs(masked):
    mps = list(masked.masked_parameters())
    named = dict(masked.named_parameters())
    assert [mp.layer for mp in mps] == LAYERS
    assert all(mp.kind == "weight" and named[mp.name] is mp.param for mp in mps)
    assert all(mp.param.shape[0] == CHANNELS[mp.layer] for mp in mps)
    prev = {mp.layer: mp.prev for mp in mps}
    assert prev["conv1"] is None
    assert prev["conv2x.0.conv1"] == "conv1"
    assert prev["conv2x.0.conv2"] == "conv2x.0.conv1"
    assert prev["conv3x.0.conv1"] == "conv2x.1.conv2"
    assert prev["conv5x.1.conv1"] == "conv5x.0.conv2"
    # every conv weight of the net except the 1x1 shortcuts (B9 parity)
    conv_weights = {n for n, p in named.items() if n.startswith("body.") and p.dim() == 4}
    assert conv_weights - {mp.name for mp in mps} == set(SHORTCUTS)


def test_protect_shortcuts_lists_them():
    net = HATMaskResNet18((3, 32, 32), ResNetConfig(protect_shortcuts=True))
    mps = {mp.name: mp for mp in net.masked_parameters()}
    assert len(mps) == 20
    sc = mps["body.conv4x.0.shortcut.weight"]
    assert (sc.layer, sc.prev) == ("conv4x.0.conv2", "conv3x.1.conv2")
    assert sc.param.shape == (256, 128, 1, 1)
    P = parameter_wise(net.masked_parameters(), net.hat.ones())
    assert P["body.conv4x.0.shortcut.weight"].shape == sc.param.shape


def test_zero_mask_on_last_layer_zeros_features(masked):
    mask = masked.hat.ones()
    mask["conv5x.1.conv2"] = torch.zeros(512)
    out = masked(torch.randn(2, 3, 32, 32), mask)
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(masked(torch.randn(2, 3, 32, 32), masked.hat.ones())) > 0


def test_channel_mask_zeros_only_that_channel(masked):
    mask = masked.hat.ones()
    mask["conv5x.1.conv2"][7] = 0.0
    out = masked(torch.randn(2, 3, 32, 32), mask)
    assert torch.all(out[:, 7] == 0)


def test_activations_recorded(masked):
    masked.record_activations = True
    try:
        masked(torch.randn(2, 3, 32, 32), masked.hat.ones())
        assert list(masked.activations) == LAYERS
        assert masked.activations["conv1"].shape == (2, 64, 16, 16)
        assert masked.activations["conv5x.1.conv2"].shape == (2, 512, 1, 1)
    finally:
        masked.record_activations = False
        masked.activations = {}


def test_parameter_wise_multiplier(masked):
    M = {l: torch.ones(n) for l, n in CHANNELS.items()}
    M["conv3x.0.conv1"][5] = 0.0  # unit i=5 of layer l free
    M["conv2x.1.conv2"][9] = 0.0  # unit j=9 of its preceding layer free
    M["conv1"][3] = 0.0
    P = parameter_wise(masked.masked_parameters(), M, "min")
    w = masked.body.conv3x[0].conv1.weight
    mult = 1 - P["body.conv3x.0.conv1.weight"]
    assert mult.shape == w.shape == (128, 64, 3, 3)
    for i, j in [(5, 9), (5, 0), (0, 9), (0, 0)]:
        expect = 1 - min(M["conv3x.0.conv1"][i], M["conv2x.1.conv2"][j])
        assert torch.all(mult[i, j] == expect)  # the whole 3x3 kernel shares it
    assert mult.sum() == 3 * 3 * (64 + 128 - 1)  # row 5 and column 9 free, everything else protected
    # first layer: rows only
    stem = 1 - P["body.conv1.weight"]
    assert torch.all(stem[3] == 1) and torch.all(stem[4] == 0)


def test_plain_and_masked_with_ones_agree():
    torch.manual_seed(1)
    plain = ResNet18((3, 32, 32), ResNetConfig())
    hat = HATMaskResNet18((3, 32, 32), ResNetConfig())
    missing, unexpected = hat.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("hat.") for k in missing)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), hat(x, hat.hat.ones()))
