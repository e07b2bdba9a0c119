"""6.1.5: ZeRO memory accounting against the worked example of the ZeRO paper (Rajbhandari et al., 2020)."""

import pytest

from llmtrain.memory import zero_memory_per_gpu


@pytest.mark.parametrize("stage, expected_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_example_7_5b_params_on_64_gpus(stage, expected_gb):
    # Figure 1 of the paper: Ψ = 7.5B parameters, N_d = 64 GPUs, K = 12.
    total = zero_memory_per_gpu(7_500_000_000, 64, stage)["total"]
    assert total / 1e9 == pytest.approx(expected_gb, abs=0.06)


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="ZeRO stage must be 0, 1, 2 or 3"):
        zero_memory_per_gpu(1000, 2, 4)
