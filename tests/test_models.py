import pytest
import torch

from models import (
    SEED_MODELS,
    ArchConfig,
    BudgetError,
    StageSpec,
    check_budget,
    count_params,
    create_model,
    get_arch,
    list_models,
    stage_param_counts,
)
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


def test_seed_presets_fit_the_budget():
    for name in SEED_MODELS.values():
        assert check_budget(get_arch(name)) <= 5_000_000


def test_budget_error_names_count_budget_and_largest_stage():
    arch = get_arch("efficient_resnet")
    params = count_params(arch)
    per_stage = stage_param_counts(arch)
    largest = per_stage.index(max(per_stage))
    with pytest.raises(BudgetError) as err:
        check_budget(arch, budget=1_000_000)
    message = str(err.value)
    assert f"{params:,}" in message
    assert "1,000,000" in message
    assert f"stage {largest}" in message
    assert f"{per_stage[largest]:,}" in message


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
