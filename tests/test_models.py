import pytest
import torch

from models import (
    SEED_MODELS,
    ArchConfig,
    BudgetTooSmallError,
    StageSpec,
    apply_width_scale,
    count_params,
    create_model,
    fit_to_budget,
    get_arch,
    list_models,
    scale_widths,
)
from models.budget import SCALE_RESOLUTION
from models.summary import format_model_list, format_summary
from models.summary import main as summary_main

# What each seed report's code printed (../shared/seeds/README.md).
SEED_COUNTS = {
    "000": 4_969_600,
    "001": 4_993_166,
    "002": 4_570_934,
    "003": 4_697_742,
    "004": 4_709_914,
}


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_shape_and_finite(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_meta_count_equals_materialized_count(name):
    model = create_model(name)
    assert count_params(get_arch(name)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("report", sorted(SEED_COUNTS))
def test_seed_presets_match_report_counts_exactly(report):
    assert count_params(get_arch(SEED_MODELS[report])) == SEED_COUNTS[report]


def test_seed_presets_fit_the_budget_as_they_are():
    for name in SEED_MODELS.values():
        arch = get_arch(name)
        assert fit_to_budget(arch, 5_000_000) == (arch, count_params(arch), 1.0)


def test_fit_to_budget_shrinks_widths_to_the_largest_scale_that_fits():
    arch = get_arch("efficient_resnet")
    small, params, scale = fit_to_budget(arch, 1_000_000)
    assert params == count_params(small) <= 1_000_000 and 0 < scale < 1
    assert [s.blocks for s in small.stages] == [s.blocks for s in arch.stages]
    assert all(s.channels % 8 == 0 for s in small.stages) and small.stem_channels % 8 == 0
    # The scale is exact: applying it rebuilds the same network, with no search.
    assert apply_width_scale(arch, scale) == small
    # ...and it is the largest that fits, to within the search's resolution.
    assert count_params(scale_widths(arch, scale + SCALE_RESOLUTION)) > 1_000_000


def test_fit_to_budget_refuses_a_budget_below_the_narrowest_network():
    arch = get_arch("efficient_resnet")
    with pytest.raises(BudgetTooSmallError, match="narrowest"):
        fit_to_budget(arch, 10_000)


def test_overrides_change_the_architecture():
    wide = create_model(
        "tiny_resnet", stem_channels=16, stages=[{"blocks": 2, "channels": 32, "stride": 1}]
    )
    assert wide.arch.stem_channels == 16
    assert wide.arch.stages == (StageSpec(2, 32, 1),)
    assert count_params(wide.arch) > count_params(get_arch("tiny_resnet"))


@pytest.mark.parametrize(
    "changes",
    [{"activation": act} for act in ("relu", "mish", "silu", "elu", "gelu")]
    + [
        {"block": "preact", "shortcut": "conv1x1"},
        {"se": True, "se_reduction": 4, "se_placement": "output"},
        {"se": True, "se_placement": "branch", "cbam": True},
        {"shortcut": "conv3x3_bn", "block_dropout": 0.2, "head_dropout": 0.3},
        {"transformer_layers": 2, "transformer_heads": 4},
        {"pooling": "avgmax"},
        {"pooling": "max", "stem_norm": False, "stem_se": True},
    ],
)
def test_family_options_build_and_run(changes):
    arch = get_arch("tiny_resnet", **changes)
    model = create_model(arch).train()
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 10)
    assert all(p.grad is not None for p in model.parameters())


def test_invalid_configs_name_the_problem():
    with pytest.raises(ValueError, match="activation='tanh'"):
        get_arch("tiny_resnet", activation="tanh")
    with pytest.raises(ValueError, match="stride is 3"):
        ArchConfig(stages=(StageSpec(1, 8, 3),))
    with pytest.raises(ValueError, match="does not divide"):
        get_arch("tiny_resnet", transformer_layers=1, transformer_heads=3)


def test_unknown_model_lists_valid_names():
    with pytest.raises(KeyError, match="efficient_resnet"):
        create_model("resnet9000")


def test_arch_dict_round_trip():
    for name in list_models():
        arch = get_arch(name)
        assert ArchConfig.from_dict(arch.to_dict()) == arch


def test_summary_table_sums_to_total(capsys):
    assert summary_main(["efficient_resnet"]) == 0
    text = capsys.readouterr().out
    assert "4,697,742" in text
    assert "stage 2 (3x256, stride 2)" in text
    assert "256x8x8" in text
    for name in list_models():
        assert name in format_model_list()
    assert "total" in format_summary("tiny_resnet")


def test_summary_unknown_model_exits_nonzero(capsys):
    assert summary_main(["nope"]) == 2
    assert "registered models" in capsys.readouterr().err
