"""ZeRO-3 loads the model partitioned, in figures: two CPU processes under ZeRO-3 through the real
`runner submit --executor local` each peak well below one process loading the same 310M-parameter
model, as `train.log`'s "model loaded: peak RSS" lines (one per rank) show.

What the figures hold, measured (transformers 5.24, DeepSpeed 0.19.8, CPU):
- Weights train in float32 on CPU: the model is M = 1183 MiB in memory, each of 2 ranks' shard M/2.
- Rank 0 alone reads the checkpoint (the others see its keys on the meta device) and copies each
  tensor in; safetensors maps the file, so its pages count in rank 0's RSS while loading: the
  whole file, F = 592 MiB in bfloat16. Saving in bfloat16 keeps that half of M.
- zero.Init makes every parameter whole, then keeps its rank's part and frees the rest. glibc's
  malloc raises its mmap threshold as large blocks are freed, after which the freed halves stay in
  its heap, fragmented between the kept ones: with the default allocator each rank's RSS stays
  near M, not M/2 (rank 1: 1730 MiB vs 1098 MiB; rank 0 between 1764 and 2177 MiB from one run to
  the next). A fixed MALLOC_MMAP_THRESHOLD_ returns freed blocks to the system, so the RSS is what
  the process holds; the jobs here run with it (the product's code path is the same).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import runner_cli, write_job

pytestmark = pytest.mark.integration

LAYERS = 24  # hidden 1024, MLP 2816: 12.6M parameters a layer; 310M in all with the tiny vocabulary
# Large blocks go straight to mmap and back to the system when freed (see the module docstring).
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536"}
PEAK = re.compile(r"model loaded: peak RSS (\d+) MiB on rank (\d+)")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, int]:
    """A random Llama of 310M parameters saved in bfloat16, with the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("models") / "llama-310m"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=LAYERS,
        num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in llama.parameters())
    llama.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del llama
    return out, params


def load_peaks(tmp_path: Path, model_dir: Path, name: str, procs: int) -> dict[int, int]:
    """Each rank's peak RSS (MiB) at the end of loading, from a one-step ZeRO-3 LoRA job."""
    spec = write_job(
        tmp_path / f"{name}.yaml", model_dir, name=name,
        training={"max_steps": 1, "per_device_train_batch_size": 1, "save_steps": 1000},
        resources={"gpus": 0, "procs_per_node": procs},
        distributed={"deepspeed": {"zero": 3}},
    )  # fmt: skip
    result = runner_cli("submit", str(spec), "--executor", "local", env=ALLOCATOR)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    (run_dir,) = (tmp_path / "out" / name).iterdir()
    log = (run_dir / "train.log").read_text()
    assert f"ZeRO-3: loading the model partitioned over {procs} process(es)" in log
    peaks = {int(rank): int(mib) for mib, rank in PEAK.findall(log)}
    assert sorted(peaks) == list(range(procs)), log[-4000:]
    return peaks


def test_zero3_ranks_each_load_a_part_of_the_model(tmp_path: Path, model: tuple[Path, int]):
    model_dir, params = model
    start = time.monotonic()
    (one,) = load_peaks(tmp_path, model_dir, "one", 1).values()
    two = load_peaks(tmp_path, model_dir, "two", 2)
    disk = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20
    ratios = {rank: mib / one for rank, mib in two.items()}
    lines = [f"  1 process:            peak RSS {one} MiB"]
    lines += [f"  2 processes, rank {r}: peak RSS {two[r]} MiB ({ratios[r]:.2f} x)" for r in sorted(two)]
    print(
        f"\nZeRO-3 load, {params / 1e6:.0f}M parameters ({params * 4 / 2**20:.0f} MiB in float32), "
        f"checkpoint {disk:.0f} MiB in bfloat16; both jobs {time.monotonic() - start:.0f} s",
        *lines, sep="\n",
    )  # fmt: skip
    # With B the process before loading (~470 MiB), M and F as in the module docstring, one process
    # peaks at B + M + F (measured 2275 MiB), rank 0 of two at B + M/2 + F (1678-1683 MiB,
    # 0.74 x) and rank 1 at B + M/2 (1093-1098 MiB, 0.48 x). Unpartitioned, every rank holds what
    # one process does: two ZeRO-2 ranks (no zero.Init) peaked at 2237 MiB each, 0.98 x. Ranks that
    # made whole tensors and kept them would stay above B + M (0.72 x). 0.85 leaves rank 0 a
    # margin of 250 MiB; 0.6 leaves rank 1 as much and still fails at 0.72 x.
    assert ratios[0] < 0.85 and ratios[1] < 0.6, f"{ratios}; did {ALLOCATOR} reach the processes?"
