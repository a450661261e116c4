"""What the engine picks per device: precision, weight dtype, attention kernel, Liger kernels.

The decisions are pure functions of the spec and the device; the device is swapped here so the
GPU branches are covered on any machine (tests/gpu checks them on a real GPU)."""

from __future__ import annotations

import pytest

from runner.core.jobspec.job import JobSpec

torch = pytest.importorskip("torch")


def _spec(method: str = "lora", **training) -> JobSpec:
    return JobSpec.model_validate({"name": "x", "model": {"path": "m"}, "method": {"type": method},
                                   "data": {"datasets": [{"path": "d"}]}, "training": training})  # fmt: skip


@pytest.fixture
def gpu(monkeypatch):
    from runner.train import model

    def make(bf16: bool = True, installed: tuple[str, ...] = ()):
        monkeypatch.setattr(model, "device_type", lambda: "cuda")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(model, "_installed", lambda name: name in installed)
        return model

    return make


@pytest.mark.parametrize(
    ("bf16_gpu", "training", "expected"),
    [
        (True, {}, "bf16"), (False, {}, "fp16"), (True, {"fp16": True}, "fp16"),
        (False, {"bf16": True}, "fp16"), (True, {"bf16": False}, "fp16"),
        (True, {"bf16": False, "fp16": False}, "fp32"),
    ],
)  # fmt: skip
def test_precision_on_gpu(gpu, bf16_gpu, training, expected):
    assert gpu(bf16=bf16_gpu).precision(_spec(**training)) == expected


def test_cpu_attention_is_sdpa_even_for_packed_rows():
    from runner.train.model import attention

    packed = _spec()
    packed.data.packing = True
    assert attention(packed) == "sdpa"  # flex attention has no backward on CPU


def test_cpu_is_always_fp32_with_a_warning(caplog):
    from runner.train.model import precision

    assert precision(_spec()) == "fp32"
    with caplog.at_level("WARNING"):
        assert precision(_spec(bf16=True)) == "fp32"
    assert "training in float32 instead of bf16" in caplog.text


def test_frozen_weights_load_in_the_training_precision_trained_ones_in_fp32(gpu):
    model = gpu()
    assert model.weight_dtype(_spec("lora")) is torch.bfloat16
    assert model.weight_dtype(_spec("full")) is torch.float32
    assert model.weight_dtype(_spec("freeze")) is torch.float32
    assert model.weight_dtype(_spec("lora", fp16=True)) is torch.float16


def test_attention_flash_where_installed_else_flex_for_packed_rows(gpu):
    packed = _spec()
    packed.data.packing = True
    assert gpu(installed=("flash_attn",)).attention(_spec()) == "flash_attention_2"
    assert gpu(installed=("flash_attn",)).attention(packed) == "flash_attention_2"
    assert gpu().attention(packed) == "flex_attention"  # a block mask, never a dense T x T one
    assert gpu().attention(_spec()) == "sdpa"
    chosen = _spec()
    chosen.model.attn_implementation = "flex_attention"
    assert gpu(installed=("flash_attn",)).attention(chosen) == "flex_attention"


def test_liger_on_where_installed_and_never_forced_onto_a_machine_without_it(gpu, caplog):
    assert gpu(installed=("liger_kernel",)).liger(_spec()) is True
    assert gpu().liger(_spec()) is False
    assert gpu(installed=("liger_kernel",)).liger(_spec(use_liger_kernel=False)) is False
    with caplog.at_level("WARNING"):
        assert gpu().liger(_spec(use_liger_kernel=True)) is False
    assert "liger-kernel needs a GPU" in caplog.text


def test_fp16_raises_adam_epsilon_unless_set(gpu, tmp_path, monkeypatch):
    from runner.train import trainer as loop

    gpu(bf16=False)
    monkeypatch.setattr(loop, "device_type", lambda: "cuda")
    args = loop.training_arguments(_spec(), tmp_path, has_eval=False)
    assert args.fp16 and not args.bf16 and args.adam_epsilon == 1e-4
    assert loop.training_arguments(_spec(adam_epsilon=1e-6), tmp_path, has_eval=False).adam_epsilon == 1e-6
