"""Healing (LayerChop): schedule and loss math, training, resume, LoRA merge, distillation, bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

import layercut.healing.trainer as heal_module
from layercut import cli
from layercut.data import builtin_text
from layercut.errors import ConfigError, DataError
from layercut.export import save_checkpoint
from layercut.healing.lora import add_lora, merge_lora
from layercut.healing.losses import kd_loss
from layercut.healing.schedule import batch_indices, lr_factor, planned_steps
from layercut.healing.trainer import NonFiniteLossError, build_config, export_healed, heal
from layercut.methods.chop import chop_layers
from tests.conftest import random_windows, tiny_loaded


@pytest.fixture
def small_text(tmp_path: Path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text(builtin_text("builtin:pydoc-calib")[:40_000])
    return path


@pytest.fixture
def held_out(tmp_path: Path) -> Path:
    path = tmp_path / "held_out.txt"
    path.write_text(builtin_text("builtin:pydoc-eval")[:8_000])
    return path


def quick_config(data: Path, **overrides) -> heal_module.HealConfig:
    settings = dict(data=str(data), mode="full", steps=4, lr=3e-3, warmup=1, batch_size=2, seq_len=32, progress=False)
    return build_config(**{**settings, **overrides})


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    b_params = dict(b.named_parameters())
    return max(float((p.detach() - b_params[name].detach()).abs().max()) for name, p in a.named_parameters())


def test_chop_layers_keeps_first_and_last():
    assert chop_layers(30, 8) == list(range(11, 19))
    for num_layers in range(3, 33):
        for cut in range(1, num_layers - 1):
            dropped = chop_layers(num_layers, cut)
            assert len(dropped) == cut and dropped == list(range(dropped[0], dropped[0] + cut))
            assert 0 not in dropped and num_layers - 1 not in dropped
    for bad_cut in (0, 29):
        with pytest.raises(ConfigError):
            chop_layers(30, bad_cut)


def test_schedule_warmup_cosine_and_budget():
    assert [lr_factor(s, 4, 20, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1)
    assert planned_steps(100, None, 512) == 100
    assert planned_steps(None, 5000, 512) == 10
    assert planned_steps(3, 5000, 512) == 3


def test_batch_order_is_seeded_and_covers_each_epoch():
    epoch = torch.cat([batch_indices(10, 3, seed=7, position=p) for p in range(3)])
    assert len(set(epoch.tolist())) == 9
    assert torch.equal(batch_indices(10, 3, 7, 4), batch_indices(10, 3, 7, 4))
    assert not torch.equal(batch_indices(10, 3, 7, 0), batch_indices(10, 3, 8, 0))


def test_kd_loss_matches_direct_formula_and_is_zero_for_equal_logits():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=generator), torch.randn(2, 5, 11, generator=generator)
    assert float(kd_loss(student, student, 2.0)) == pytest.approx(0.0, abs=1e-7)
    p_teacher = F.softmax(teacher / 2.0, -1)
    direct = (p_teacher * (p_teacher.log() - F.log_softmax(student / 2.0, -1))).sum(-1).mean() * 4.0
    assert float(kd_loss(student, teacher, 2.0)) == pytest.approx(float(direct), rel=1e-5)


def test_training_lowers_held_out_perplexity(small_text, held_out, tmp_path):
    loaded = tiny_loaded("llama")
    result = heal(loaded, quick_config(small_text, steps=8, ppl=str(held_out), eval_every=4, work_dir=str(tmp_path / "w")))
    assert result.ppl_after < 0.8 * result.ppl_before
    log = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9)) and "eval_ppl" in log[3]
    assert log[-1]["loss"] < log[0]["loss"]
    assert (tmp_path / "w" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert result.tokens == 8 * 2 * 32 and result.tokens_per_second > 0


@pytest.mark.parametrize("mode, extra", [("full", {"grad_accum": 2}), ("lora", {"lora_rank": 4})])
def test_resume_continues_bit_exactly(small_text, tmp_path, mode, extra):
    straight = tiny_loaded("llama")
    heal(straight, quick_config(small_text, mode=mode, save_every=2, work_dir=str(tmp_path / "a"), **extra))
    resumed = tiny_loaded("llama")
    config = quick_config(small_text, mode=mode, work_dir=str(tmp_path / "b"),
                          resume=str(tmp_path / "a" / "checkpoint-000002"), **extra)
    result = heal(resumed, config)
    assert result.steps == 4
    assert max_weight_diff(straight.model, resumed.model) <= 1e-6


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(small_text, tmp_path, monkeypatch):
    straight = tiny_loaded("llama")
    heal(straight, quick_config(small_text))
    real_step, calls = heal_module.train_step, []

    def interrupted_step(run, step):
        calls.append(step)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(run, step)

    monkeypatch.setattr(heal_module, "train_step", interrupted_step)
    first = heal(tiny_loaded("llama"), quick_config(small_text, work_dir=str(tmp_path / "w")))
    assert first.interrupted and first.steps == 2
    assert first.checkpoint == str(tmp_path / "w" / "checkpoint-000002")
    monkeypatch.setattr(heal_module, "train_step", real_step)
    resumed = tiny_loaded("llama")
    heal(resumed, quick_config(small_text, work_dir=str(tmp_path / "w"), resume=first.checkpoint))
    assert max_weight_diff(straight.model, resumed.model) <= 1e-6


def test_lora_merge_equals_adapter_logits_and_reloads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = tiny_loaded("llama")
    wrapped = add_lora(loaded.model, loaded.adapter, rank=4, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    windows = random_windows()
    with torch.no_grad():
        adapter_logits = wrapped(input_ids=windows).logits
        loaded.model = merge_lora(wrapped)
        merged_logits = loaded.model(input_ids=windows).logits
    assert float((adapter_logits - merged_logits).abs().max()) < 1e-5
    save_checkpoint(loaded, tmp_path / "merged", {"command": "heal", "method": "layerchop-lora"})
    assert not any("lora" in key for key in load_file(str(tmp_path / "merged" / "model.safetensors")))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert float((reloaded(input_ids=windows).logits - adapter_logits).abs().max()) < 1e-5


def test_lora_heal_exports_a_plain_checkpoint(small_text, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = tiny_loaded("qwen2")
    config = quick_config(small_text, mode="lora", steps=2, work_dir=str(tmp_path / "out"), save_every=2)
    result = heal(loaded, config)
    out = export_healed(loaded, config, result, tmp_path / "out")
    record = json.loads((out / "layercut.json").read_text())["steps"][-1]
    assert record["method"] == "layerchop-lora" and record["params"]["steps"] == 2
    assert (out / "checkpoint-000002" / "trainer_state.json").is_file() and (out / "loss_curve.png").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    windows = random_windows()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=windows).logits, loaded.model(input_ids=windows).logits, atol=1e-5)


def test_distilling_from_an_identical_teacher_has_zero_kl(small_text, tmp_path):
    loaded = tiny_loaded("llama")
    teacher = copy.deepcopy(loaded)
    config = quick_config(small_text, steps=1, kd_weight=1.0, kd_temperature=2.0, work_dir=str(tmp_path / "w"))
    heal(loaded, config, teacher=teacher)
    record = json.loads((tmp_path / "w" / "log.jsonl").read_text().splitlines()[0])
    assert record["kl"] == pytest.approx(0.0, abs=1e-6) and record["ce"] > 1.0
    assert record["loss"] == pytest.approx(0.0, abs=1e-6) and record["grad_norm"] < 1e-4


def test_resume_from_another_models_checkpoint_is_refused(small_text, tmp_path):
    heal(tiny_loaded("llama"), quick_config(small_text, steps=2, save_every=2, work_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="another model"):
        heal(tiny_loaded("llama", num_layers=4),
             quick_config(small_text, resume=str(tmp_path / "a" / "checkpoint-000002"), work_dir=str(tmp_path / "b")))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small_text, tmp_path, monkeypatch):
    real_loss, calls = heal_module.next_token_loss, []

    def diverging_loss(logits, input_ids):
        calls.append(1)
        loss = real_loss(logits, input_ids)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(heal_module, "next_token_loss", diverging_loss)
    work = tmp_path / "w"
    with pytest.raises(NonFiniteLossError, match="checkpoint-000002"):
        heal(tiny_loaded("llama"), quick_config(small_text, save_every=1, work_dir=str(work)))
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-000001", "checkpoint-000002"]
    assert json.loads((work / "checkpoint-000002" / "trainer_state.json").read_text())["step"] == 2


def test_data_shorter_than_one_window_is_a_data_error(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    with pytest.raises(DataError, match="fewer than one window"):
        heal(tiny_loaded("llama"), quick_config(short, seq_len=64))


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    loaded = tiny_loaded("llama")
    loaded.model.save_pretrained(tmp_path / "tiny")
    loaded.tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_cli_heals_and_reports_bad_input_in_one_line(tiny_model_dir, small_text, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("layercut.commands.heal",))
    base = ["heal", "--model", str(tiny_model_dir), "--data", str(small_text), "--seq-len", "32",
            "--batch-size", "2", "--no-progress"]
    assert cli.main([*base, "--steps", "2", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "layercut.json").read_text())["steps"][-1]["command"] == "heal"
    capsys.readouterr()
    short = tmp_path / "short.txt"
    short.write_text("too short")
    bad = ["heal", "--model", str(tiny_model_dir), "--data", str(short), "--steps", "2", "--no-progress",
           "--out", str(tmp_path / "bad")]
    assert cli.main(bad) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("layercut: error:") and "fewer than one window" in last_line


def test_prune_chop_with_heal_steps(tiny_model_dir, small_text, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("layercut.commands.prune",))
    out = tmp_path / "chopped"
    argv = ["prune", "--model", str(tiny_model_dir), "--method", "chop", "--cut", "2", "--calib", str(small_text),
            "--samples", "4", "--seq-len", "32", "--batch-size", "2", "--heal-steps", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    step = json.loads((out / "layercut.json").read_text())["steps"][-1]
    assert step["result"]["removed_blocks"] == chop_layers(6, 2) == [2, 3]
    assert step["heal"]["method"] == "layerchop-lora" and step["heal"]["params"]["steps"] == 2  # the default mode
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4


def test_several_training_texts_are_mixed(small_text, held_out, tmp_path):
    from layercut.healing.trainer import training_windows

    tokenizer = tiny_loaded("llama").tokenizer
    one = training_windows(tokenizer, quick_config(small_text))
    both = training_windows(tokenizer, build_config(data=[str(small_text), str(held_out)], steps=1, seq_len=32))
    other = training_windows(tokenizer, quick_config(held_out))
    assert torch.equal(both, torch.cat([one, other]))


def test_max_seconds_stops_training_and_replans_the_schedule(small_text, monkeypatch):
    clock = iter(float(t) for t in range(0, 1000))
    monkeypatch.setattr(heal_module.time, "perf_counter", lambda: next(clock))  # every step takes 1 s
    result = heal(tiny_loaded("llama"), quick_config(small_text, steps=100, max_seconds=6.5))
    assert result.steps == result.total_steps == 6


@pytest.mark.parametrize("budget, steps", [(40, 34), (20, 14)])
def test_slow_first_steps_are_not_taken_for_the_rate(small_text, monkeypatch, budget, steps):
    """The first three steps take 3 s, the rest 1 s: after step 3 the plan expects 3 s a step, but it is
    re-planned after every step from the median of the last 20 step times, which soon reads 1 s, so
    the run fills its budget: 9 s + 1 s a step."""
    calls = {"n": 0, "t": 0.0}

    def clock() -> float:  # the trainer reads the clock at the start and at the end of every step
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            calls["t"] += 3.0 if calls["n"] <= 6 else 1.0
        return calls["t"]

    monkeypatch.setattr(heal_module.time, "perf_counter", clock)
    result = heal(tiny_loaded("llama"), quick_config(small_text, steps=500, max_seconds=budget))
    assert result.steps == result.total_steps == steps
    assert heal_module.time_limited_steps(500, 3, 9.0, 100.0) == 33


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_train_from_auto_keeps_the_blocks_below_the_cut_and_the_embeddings(small_text, mode):
    """With a teacher, `auto` finds the first block that differs (here block 2, changed on purpose) and
    training leaves every weight below it, the embeddings and the LM head bit-identical."""
    from layercut.healing.scope import first_changed_block

    teacher = tiny_loaded("llama", num_layers=4)
    loaded = copy.deepcopy(teacher)
    blocks = loaded.adapter.blocks(loaded.model)
    with torch.no_grad():
        loaded.adapter.down_proj(blocks[2]).weight.mul_(0.5)
    del blocks[3]
    assert first_changed_block(loaded.model, teacher.model, loaded.adapter) == 2
    before = copy.deepcopy(loaded.model)
    result = heal(loaded, quick_config(small_text, mode=mode, steps=2, train_from="auto", kd_weight=0.5),
                  teacher=teacher)
    assert result.train_from == 2
    old = dict(before.named_parameters())
    changed = {name for name, p in loaded.model.named_parameters() if not torch.equal(p, old[name])}
    assert changed and all(name.startswith("model.layers.2.") or name == "model.norm.weight" for name in changed)
    if mode == "lora":
        assert "model.norm.weight" not in changed


def test_train_from_checks_its_value(small_text):
    with pytest.raises(ConfigError, match="--train-from auto compares the model's blocks with the teacher's"):
        heal(tiny_loaded("llama"), quick_config(small_text, train_from="auto"))
    with pytest.raises(ConfigError, match="--train-from 9 is not a block of this 6-block model; use 0..5 or auto"):
        heal(tiny_loaded("llama"), quick_config(small_text, train_from=9))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_shared_prefix_gives_the_teacher_s_own_logits(family):
    """The teacher run from the student's hidden state at the first changed block, with its lower blocks
    replaced by stand-ins, returns the logits of a full teacher pass, and gets its blocks back."""
    from functools import partial

    from layercut.healing.scope import SharedPrefix
    from layercut.healing.trainer import forward_logits

    teacher = tiny_loaded(family, num_layers=5)
    student = copy.deepcopy(teacher)
    blocks = student.adapter.blocks(student.model)
    with torch.no_grad():
        student.adapter.down_proj(blocks[3]).weight.mul_(0.5)
    del blocks[4]
    shared = SharedPrefix(student.model, teacher.model, teacher.adapter, 3)
    teacher_blocks = list(teacher.adapter.blocks(teacher.model))
    windows = random_windows()
    with torch.no_grad():
        student.model(input_ids=windows)
        logits = shared.teacher_logits(partial(forward_logits, teacher.model, windows, None))
        full = teacher.model(input_ids=windows).logits
    shared.close()
    assert shared.active and torch.allclose(logits, full, rtol=1e-5, atol=1e-5)
    assert list(teacher.adapter.blocks(teacher.model)) == teacher_blocks


def test_block_origins_replay_every_prune_step_and_pair_the_blocks_behind_each_cut():
    from layercut.healing.hidden import behind_cut_pairs, block_origins, cut_pairs

    history = [{"command": "prune", "result": {"layers_before": 10, "removed_blocks": [3, 4]}},
               {"command": "slim", "result": {"ratio": 0.2}},
               {"command": "heal", "result": {"ppl_after": 9.0}},
               {"command": "prune", "result": {"layers_before": 8, "removed_blocks": [5]}}]
    origins = block_origins(history, 7)
    assert origins == [0, 1, 2, 5, 6, 8, 9]
    assert cut_pairs(origins) == [(3, 5), (5, 8)]
    assert behind_cut_pairs(origins) == [(3, 5), (4, 6), (5, 8), (6, 9)]
    assert behind_cut_pairs([0, 1, 2]) == []
    assert block_origins(history, 6) is None
    assert block_origins(history[1:3], 7) is None
    assert block_origins([{"result": {"layers_before": 10, "removed_blocks": [1]}}, history[3]], 8) is None


def test_relative_hidden_error_matches_the_direct_formula():
    from layercut.healing.hidden import relative_hidden_error

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    direct = sum(float(((s - t) ** 2).sum() / (t ** 2).sum())
                 for s, t in zip(student.reshape(-1, 8), teacher.reshape(-1, 8))) / 10
    assert float(relative_hidden_error(student, teacher)) == pytest.approx(direct, rel=1e-6)
    assert float(relative_hidden_error(teacher, teacher)) == 0.0


def test_per_token_relative_error_is_one_value_per_token():
    from layercut.healing.hidden import per_token_relative_error

    torch.manual_seed(1)
    student, teacher = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    errors = per_token_relative_error(student, teacher)
    assert errors.shape == (3, 4)
    s, t = student[2, 1], teacher[2, 1]
    assert float(errors[2, 1]) == pytest.approx(float(((s - t) ** 2).sum() / (t ** 2).sum()), rel=1e-6)


def first_training_batch(loaded, config, text_path) -> torch.Tensor:
    """The token windows healing trains on at its first step, rebuilt the way the trainer builds them."""
    from layercut.data import bos_id, read_text, split_windows, tokenize_text

    ids = tokenize_text(loaded.tokenizer, read_text(str(text_path)))
    windows = split_windows(ids, config.seq_len, bos_id(loaded.tokenizer))
    return windows[batch_indices(windows.shape[0], config.batch_size, config.seed, 0)]


def cut_student(teacher, removed: list[int]):
    from layercut.surgery import remove_blocks

    student = copy.deepcopy(teacher)
    remove_blocks(student, removed)
    student.history = [{"command": "prune", "result": {"layers_before": teacher.num_layers, "removed_blocks": removed}}]
    return student


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_hidden_kd_logs_the_error_behind_the_cut_and_lowers_it(small_text, family, tmp_path):
    """The first logged hidden-state term equals the relative error between the student's block behind
    the cut and the teacher's same original block, computed here from output_hidden_states; training
    with it ends with a lower error than the same training without it, and the model card names the
    matched blocks."""
    from layercut.healing.hidden import relative_hidden_error

    teacher = tiny_loaded(family, num_layers=6)
    base = quick_config(small_text, mode="lora", steps=12, kd_weight=0.5, hidden_kd_weight=5.0,
                        work_dir=str(tmp_path / "work"))
    batch = first_training_batch(teacher, base, small_text)

    def error_behind_cut(student) -> float:
        with torch.no_grad():
            mine = student.model(input_ids=batch, output_hidden_states=True).hidden_states[3]
            dense = teacher.model(input_ids=batch, output_hidden_states=True).hidden_states[5]
        return float(relative_hidden_error(mine, dense))

    with_hidden, without = cut_student(teacher, [2, 3]), cut_student(teacher, [2, 3])
    before = error_behind_cut(with_hidden)
    result = heal(with_hidden, base, teacher=teacher)
    heal(without, base.model_copy(update={"hidden_kd_weight": 0.0, "work_dir": None}), teacher=teacher)
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert result.hidden_pairs == [(2, 4)]
    assert log[0]["hidden"] == pytest.approx(before, rel=1e-4)
    assert error_behind_cut(with_hidden) < min(before, error_behind_cut(without))
    record = heal_module.heal_step_record(base, result)
    assert record["params"]["hidden_kd_blocks"] == [{"student": 2, "teacher": 4}]


def test_hidden_kd_on_every_block_behind_the_cut_logs_the_mean_error_over_them(small_text, tmp_path):
    """With hidden_kd_match="all" every block from the cut to the last is matched with its original block,
    and the first logged term is the mean of their relative errors, computed here from each block's output
    (the last entry of output_hidden_states has the final norm applied, so it cannot serve)."""
    from layercut.calibration.capture import first_tensor
    from layercut.healing.hidden import relative_hidden_error

    def block_outputs(loaded, batch) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        handles = [block.register_forward_hook(lambda _m, _a, out: outputs.append(first_tensor(out)))
                   for block in loaded.adapter.blocks(loaded.model)]
        with torch.no_grad():
            loaded.model(input_ids=batch)
        for handle in handles:
            handle.remove()
        return outputs

    teacher = tiny_loaded("llama", num_layers=6)
    config = quick_config(small_text, mode="lora", steps=2, kd_weight=0.5, hidden_kd_weight=1.0,
                          hidden_kd_match="all", work_dir=str(tmp_path / "work"))
    batch = first_training_batch(teacher, config, small_text)
    student = cut_student(teacher, [2, 3])
    mine, dense = block_outputs(student, batch), block_outputs(teacher, batch)
    expected = sum(float(relative_hidden_error(mine[s], dense[t])) for s, t in [(2, 4), (3, 5)]) / 2
    result = heal(student, config, teacher=teacher)
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert result.hidden_pairs == [(2, 4), (3, 5)]
    assert log[0]["hidden"] == pytest.approx(expected, rel=1e-4)
    assert heal_module.heal_step_record(config, result)["params"]["hidden_kd_match"] == "all"


def test_hidden_kd_explains_what_it_needs(small_text):
    teacher = tiny_loaded("llama", num_layers=6)
    with pytest.raises(ConfigError, match="--hidden-kd-weight distils hidden states from the dense model; give --teacher"):
        heal(cut_student(teacher, [2]), quick_config(small_text, hidden_kd_weight=1.0))
    plain = copy.deepcopy(teacher)
    with pytest.raises(ConfigError, match="records no removed blocks; heal a model that layercut pruned"):
        heal(plain, quick_config(small_text, hidden_kd_weight=1.0), teacher=teacher)
    with pytest.raises(ConfigError, match="the teacher has 4 layers but the model came from one with at least 6"):
        heal(cut_student(teacher, [2]), quick_config(small_text, hidden_kd_weight=1.0),
             teacher=tiny_loaded("llama", num_layers=4))
    with pytest.raises(ConfigError, match="has no interior cut"):
        heal(cut_student(teacher, [5]), quick_config(small_text, hidden_kd_weight=1.0), teacher=teacher)
