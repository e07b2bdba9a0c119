"""The exercise graders: they accept llmtrain's implementations and a right answer written independently of it,
report the stubs as committed (not a learner's working copy) as not implemented, reject every planted mistake with
its own message, and every message a grader can give is drawn by a planted mistake."""

from __future__ import annotations

import inspect
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import exercise_mistakes as mistakes
import pytest
from conftest import ROOT, script_env

from exercises import check

EXERCISES = {e.name: e for e in check.EXERCISES}
GRADERS_DIR = ROOT / "exercises" / "graders"

# (exercise, planted wrong answer, the key of the message it must get)
PLANTED = [
    ("tokenize_with_eos", mistakes.tokenize_returning_text, "common.not_token_lists"),
    ("tokenize_with_eos", mistakes.tokenize_as_list, "tokenize_with_eos.not_a_dict"),
    ("tokenize_with_eos", mistakes.tokenize_into_one_row, "tokenize_with_eos.row_count"),
    ("tokenize_with_eos", mistakes.tokenize_without_eos, "tokenize_with_eos.missing_eos"),
    ("tokenize_with_eos", mistakes.tokenize_eos_first, "tokenize_with_eos.eos_at_start"),
    ("tokenize_with_eos", mistakes.tokenize_with_pad_for_eos, "tokenize_with_eos.pad_for_eos"),
    ("tokenize_with_eos", mistakes.tokenize_with_default_special_tokens, "tokenize_with_eos.added_special_tokens"),
    ("tokenize_with_eos", mistakes.tokenize_with_newline, "tokenize_with_eos.token_mismatch"),
    ("group_texts", mistakes.group_returning_blocks_only, "group_texts.not_a_dict"),
    ("group_texts", mistakes.group_with_shifted_labels, "group_texts.labels_shifted"),
    ("group_texts", mistakes.group_masking_first_label, "group_texts.labels_differ"),
    ("group_texts", mistakes.group_keeping_remainder, "group_texts.remainder_kept"),
    ("group_texts", mistakes.group_per_document, "group_texts.per_document"),
    ("group_texts", mistakes.group_dropping_eos, "group_texts.eos_dropped"),
    ("group_texts", mistakes.group_newest_first, "group_texts.blocks_differ"),
    ("find_resume_checkpoint", mistakes.resume_listing_a_missing_dir, "find_resume_checkpoint.no_output_dir"),
    ("find_resume_checkpoint", mistakes.resume_refusing_an_empty_dir, "find_resume_checkpoint.empty_output_dir"),
    ("find_resume_checkpoint", mistakes.resume_sorting_names, "find_resume_checkpoint.numeric_order"),
    ("find_resume_checkpoint", mistakes.resume_from_last_checkpoint, "find_resume_checkpoint.incomplete"),
    ("find_resume_checkpoint", mistakes.resume_taking_anything_named_checkpoint,
     "find_resume_checkpoint.not_a_checkpoint"),
    ("find_resume_checkpoint", mistakes.resume_never_refusing, "find_resume_checkpoint.nonempty_without_checkpoint"),
    ("find_resume_checkpoint", mistakes.resume_refusing_only_without_folders, "find_resume_checkpoint.only_incomplete"),
    ("find_resume_checkpoint", mistakes.resume_ignoring_overwrite, "find_resume_checkpoint.overwrite"),
    ("find_resume_checkpoint", mistakes.resume_ignoring_the_users_checkpoint, "find_resume_checkpoint.user_checkpoint"),
    ("find_resume_checkpoint", mistakes.resume_trusting_the_user, "find_resume_checkpoint.user_checkpoint_incomplete"),
    ("logits_bytes", mistakes.logits_size_as_text, "logits_bytes.not_a_number"),
    ("logits_bytes", mistakes.logits_bytes_in_working_dtype, "logits_bytes.working_dtype"),
    ("logits_bytes", mistakes.logits_bytes_one_fp32_copy, "logits_bytes.one_fp32_copy"),
    ("logits_bytes", mistakes.logits_bytes_over_hidden_size, "logits_bytes.hidden_size"),
    ("logits_bytes", mistakes.logits_bytes_in_the_forward, "logits_bytes.other"),
    ("tokenize_conversation", mistakes.tokenize_returning_a_pair, "tokenize_conversation.not_a_dict"),
    ("tokenize_conversation", mistakes.tokenize_without_truncating, "tokenize_conversation.too_long"),
    ("tokenize_conversation", mistakes.tokenize_turn_by_turn, "tokenize_conversation.tokenized_in_pieces"),
    ("tokenize_conversation", mistakes.tokenize_without_system_turn, "tokenize_conversation.ids_differ"),
    ("tokenize_conversation", mistakes.tokenize_truncating_ids_only, "tokenize_conversation.length_mismatch"),
    ("tokenize_conversation", mistakes.tokenize_with_shifted_labels, "tokenize_conversation.labels_shifted"),
    ("tokenize_conversation", mistakes.tokenize_with_template_mask, "tokenize_conversation.nothing_supervised"),
    ("tokenize_conversation", mistakes.tokenize_with_pad_as_ignore, "tokenize_conversation.pad_as_ignore"),
    ("tokenize_conversation", mistakes.tokenize_supervising_everything, "tokenize_conversation.prompt_supervised"),
    ("tokenize_conversation", mistakes.tokenize_by_token_start, "tokenize_conversation.straddling_token"),
    ("tokenize_conversation", mistakes.tokenize_without_im_end, "tokenize_conversation.im_end_unsupervised"),
    ("tokenize_conversation", mistakes.tokenize_last_reply_only, "tokenize_conversation.reply_unsupervised"),
    ("tokenize_conversation", mistakes.tokenize_with_mask_as_labels, "tokenize_conversation.label_value"),
    ("make_collator", mistakes.collator_named, "make_collator.not_callable"),
    ("make_collator", mistakes.collator_without_positions, "make_collator.batch_keys"),
    ("make_collator", mistakes.collator_with_attention_mask, "make_collator.packed_attention_mask"),
    ("make_collator", mistakes.collator_padding_when_packing, "make_collator.packed_shape"),
    ("make_collator", mistakes.collator_sorting_by_length, "make_collator.packed_ids"),
    ("make_collator", mistakes.collator_counting_on, "make_collator.positions_continue"),
    ("make_collator", mistakes.collator_counting_from_one, "make_collator.positions_other"),
    ("make_collator", mistakes.collator_keeping_first_labels, "make_collator.first_label_kept"),
    ("make_collator", mistakes.collator_masking_last_labels, "make_collator.last_label_masked"),
    ("make_collator", mistakes.collator_shifting_labels, "make_collator.packed_labels"),
    ("make_collator", mistakes.collator_padding_to_max_len, "make_collator.padded_shape"),
    ("make_collator", mistakes.collator_padding_left, "make_collator.padded_left"),
    ("make_collator", mistakes.collator_without_padding_mask, "make_collator.padded_attention_mask"),
    ("make_collator", mistakes.collator_padding_labels_with_pad_id, "make_collator.padded_labels"),
    ("make_collator", mistakes.collator_padding_ids_with_ignore, "make_collator.padded_other"),
    ("LoraLinear", mistakes.LoraTrainingTheBase, "LoraLinear.base_trainable"),
    ("LoraLinear", mistakes.LoraWithOtherNames, "LoraLinear.missing_attribute"),
    ("LoraLinear", mistakes.LoraWithTransposedA, "LoraLinear.wrong_shape"),
    ("LoraLinear", mistakes.LoraFrozenEverything, "LoraLinear.lora_frozen"),
    ("LoraLinear", mistakes.LoraInFloat32, "LoraLinear.dtype"),
    ("LoraLinear", mistakes.LoraWithRandomB, "LoraLinear.b_not_zero"),
    ("LoraLinear", mistakes.LoraAllZero, "LoraLinear.a_zero"),
    ("LoraLinear", mistakes.LoraAddingTheBiasTwice, "LoraLinear.start_differs"),
    ("LoraLinear", mistakes.LoraScaledByAlpha, "LoraLinear.scaling"),
    ("LoraLinear", mistakes.LoraOnWeightData, "LoraLinear.no_grad"),
    ("LoraLinear", mistakes.LoraDetachingItsInput, "LoraLinear.gradient"),
    ("LoraLinear", mistakes.LoraMergingWithoutScaling, "LoraLinear.merge_scaling"),
    ("LoraLinear", mistakes.LoraBypassAfterMerge, "LoraLinear.merge_output"),
    ("LoraLinear", mistakes.LoraUnmergingWithoutScaling, "LoraLinear.unmerge_weight"),
    ("LoraLinear", mistakes.LoraStayingMerged, "LoraLinear.unmerge_forward"),
    ("LoraLinear", mistakes.LoraDroppingTheOutput, "LoraLinear.dropout_on_base"),
    ("LoraLinear", mistakes.LoraIgnoringDropout, "LoraLinear.dropout_ignored"),
    ("LoraLinear", mistakes.LoraDroppingAfterA, "LoraLinear.dropout_place"),
    ("LoraLinear", mistakes.LoraDroppingInEval, "LoraLinear.dropout_in_eval"),
    ("inject_lora", mistakes.inject_returning_nothing, "inject_lora.returns"),
    ("inject_lora", mistakes.inject_with_names_only, "inject_lora.regex"),
    ("inject_lora", mistakes.inject_by_dotted_setattr, "inject_lora.not_replaced"),
    ("inject_lora", mistakes.inject_into_all_attention, "inject_lora.extra_modules"),
    ("inject_lora", mistakes.inject_without_freezing, "inject_lora.others_trainable"),
    ("inject_lora", mistakes.inject_then_freeze, "inject_lora.lora_frozen"),
    ("inject_lora", mistakes.inject_with_random_b, "inject_lora.start_differs"),
    ("inject_lora", mistakes.inject_with_a_fixed_alpha, "inject_lora.differs_from_peft"),
    ("lora_parameter_count", mistakes.count_as_float, "lora_parameter_count.not_int"),
    ("lora_parameter_count", mistakes.count_square_matrices, "lora_parameter_count.square"),
    ("lora_parameter_count", mistakes.count_full_update, "lora_parameter_count.full_matrix"),
    ("lora_parameter_count", mistakes.count_with_bias, "lora_parameter_count.bias"),
    ("lora_parameter_count", mistakes.count_regex_as_names, "lora_parameter_count.regex"),
    ("lora_parameter_count", mistakes.count_without_rank, "lora_parameter_count.other"),
    ("sequence_logprobs", mistakes.logprobs_as_list, "sequence_logprobs.not_tensor"),
    ("sequence_logprobs", mistakes.logprobs_keeping_a_dim, "sequence_logprobs.shape"),
    ("sequence_logprobs", mistakes.logprobs_in_eval_mode, "sequence_logprobs.mode_changed"),
    ("sequence_logprobs", mistakes.logprobs_with_prompt, "sequence_logprobs.prompt_counted"),
    ("sequence_logprobs", mistakes.logprobs_of_every_position, "sequence_logprobs.padding_counted"),
    ("sequence_logprobs", mistakes.logprobs_without_shift, "sequence_logprobs.not_shifted"),
    ("sequence_logprobs", mistakes.logprobs_averaged, "sequence_logprobs.averaged"),
    ("sequence_logprobs", mistakes.logprobs_over_the_wrong_axis, "sequence_logprobs.other"),
    ("sequence_logprobs", mistakes.logprobs_without_grad, "sequence_logprobs.no_grad"),
    ("sequence_logprobs", mistakes.logprobs_in_model_dtype, "sequence_logprobs.bf16"),
    ("sequence_logprobs", mistakes.logprobs_of_softmax, "sequence_logprobs.underflow"),
    ("sequence_logprobs", mistakes.logprobs_with_epsilon, "sequence_logprobs.confident_other"),
    ("dpo_loss", mistakes.dpo_loss_as_number, "common.loss_not_tensor"),
    ("dpo_loss", mistakes.dpo_loss_as_a_column, "dpo_loss.shape"),
    ("dpo_loss", mistakes.dpo_loss_by_hand, "dpo_loss.not_finite"),
    ("dpo_loss", mistakes.dpo_loss_per_pair, "dpo_loss.per_pair"),
    ("dpo_loss", mistakes.dpo_loss_summed, "dpo_loss.summed"),
    ("dpo_loss", mistakes.dpo_loss_flipped_sign, "dpo_loss.flipped_sign"),
    ("dpo_loss", mistakes.dpo_loss_without_minus, "dpo_loss.missing_minus"),
    ("dpo_loss", mistakes.dpo_loss_without_beta, "dpo_loss.no_beta"),
    ("dpo_loss", mistakes.dpo_loss_without_reference, "dpo_loss.no_reference"),
    ("dpo_loss", mistakes.dpo_loss_beta_on_chosen_only, "dpo_loss.other"),
    ("dpo_loss", mistakes.dpo_loss_detached, "dpo_loss.no_grad"),
    ("dpo_loss", mistakes.dpo_loss_training_chosen_only, "dpo_loss.gradient"),
    ("dpo_batch_loss", mistakes.batch_loss_in_eval_mode, "dpo_batch_loss.mode_changed"),
    ("dpo_batch_loss", mistakes.batch_loss_leaving_the_adapter_off, "dpo_batch_loss.adapter_left_disabled"),
    ("dpo_batch_loss", mistakes.batch_loss_per_pair, "dpo_batch_loss.shape"),
    ("dpo_batch_loss", mistakes.batch_loss_against_itself, "dpo_batch_loss.reference_is_policy"),
    ("dpo_batch_loss", mistakes.batch_loss_interleaved, "dpo_batch_loss.interleaved"),
    ("dpo_batch_loss", mistakes.batch_loss_rejected_first, "dpo_batch_loss.halves_swapped"),
    ("dpo_batch_loss", mistakes.batch_loss_ignoring_the_reference, "dpo_batch_loss.reference_ignored"),
    ("dpo_batch_loss", mistakes.batch_loss_with_beta_one, "dpo_batch_loss.other"),
    ("dpo_batch_loss", mistakes.batch_loss_without_grad, "dpo_batch_loss.no_grad"),
    ("dpo_batch_loss", mistakes.batch_loss_training_chosen_only, "dpo_batch_loss.gradient"),
    ("dpo_batch_loss", mistakes.batch_loss_with_reference_gradients, "dpo_batch_loss.reference_grad"),
    ("group_advantages", mistakes.advantages_as_list, "group_advantages.not_tensor"),
    ("group_advantages", mistakes.advantages_per_group, "group_advantages.shape"),
    ("group_advantages", mistakes.advantages_without_eps, "group_advantages.not_finite"),
    ("group_advantages", mistakes.advantages_over_whole_batch, "group_advantages.whole_batch"),
    ("group_advantages", mistakes.advantages_population_std, "group_advantages.population_std"),
    ("group_advantages", mistakes.advantages_strided, "group_advantages.strided_groups"),
    ("group_advantages", mistakes.advantages_never_scaled, "group_advantages.not_scaled"),
    ("group_advantages", mistakes.advantages_always_scaled, "group_advantages.scaled_anyway"),
    ("group_advantages", mistakes.advantages_over_variance, "group_advantages.other"),
    ("group_advantages", mistakes.advantages_for_any_group, "group_advantages.group_of_one"),
    ("k3_kl", mistakes.kl_as_list, "k3_kl.not_tensor"),
    ("k3_kl", mistakes.kl_averaged, "k3_kl.shape"),
    ("k3_kl", mistakes.kl_reversed, "k3_kl.reversed"),
    ("k3_kl", mistakes.kl_k1, "k3_kl.k1"),
    ("k3_kl", mistakes.kl_k2, "k3_kl.k2"),
    ("k3_kl", mistakes.kl_without_minus_one, "k3_kl.missing_minus_one"),
    ("k3_kl", mistakes.kl_without_linear_term, "k3_kl.other"),
    ("k3_kl", mistakes.kl_detached, "k3_kl.no_grad"),
    ("k3_kl", mistakes.kl_with_detached_ratio, "k3_kl.gradient"),
    ("grpo_loss", mistakes.grpo_per_token_loss, "grpo_loss.shape"),
    ("grpo_loss", mistakes.grpo_dividing_by_token_count, "grpo_loss.not_finite"),
    ("grpo_loss", mistakes.grpo_without_mask, "grpo_loss.mask_ignored"),
    ("grpo_loss", mistakes.grpo_always_dapo, "grpo_loss.dapo_for_grpo"),
    ("grpo_loss", mistakes.grpo_always_per_completion, "grpo_loss.grpo_for_dapo"),
    ("grpo_loss", mistakes.grpo_over_padded_length, "grpo_loss.fixed_length"),
    ("grpo_loss", mistakes.grpo_without_clipping, "grpo_loss.no_clip"),
    ("grpo_loss", mistakes.grpo_taking_max, "grpo_loss.max_not_min"),
    ("grpo_loss", mistakes.grpo_symmetric_clip, "grpo_loss.symmetric_clip"),
    ("grpo_loss", mistakes.grpo_inverted_ratio, "grpo_loss.ratio_inverted"),
    ("grpo_loss", mistakes.grpo_ignoring_old_logps, "grpo_loss.old_ignored"),
    ("grpo_loss", mistakes.grpo_without_kl, "grpo_loss.kl_missing"),
    ("grpo_loss", mistakes.grpo_subtracting_kl, "grpo_loss.kl_sign"),
    ("grpo_loss", mistakes.grpo_with_k1, "grpo_loss.kl_k1"),
    ("grpo_loss", mistakes.grpo_with_reversed_kl, "grpo_loss.kl_reversed"),
    ("grpo_loss", mistakes.grpo_never_correcting, "grpo_loss.correction_ignored"),
    ("grpo_loss", mistakes.grpo_always_correcting, "grpo_loss.correction_always"),
    ("grpo_loss", mistakes.grpo_with_batch_advantage, "grpo_loss.other"),
    ("grpo_loss", mistakes.grpo_as_number, "grpo_loss.no_grad"),
    ("grpo_loss", mistakes.grpo_with_detached_ratio, "grpo_loss.ratio_detached"),
    ("grpo_loss", mistakes.grpo_with_detached_correction, "grpo_loss.correction_detached"),
    ("grpo_loss", mistakes.grpo_with_detached_kl, "grpo_loss.gradient_other"),
]


def message_keys(source: str, prefixes: set[str]) -> set[str]:
    """Every "prefix.mistake" string literal in `source`: the keys of the messages that code can give."""
    return {key for key in re.findall(r'"([A-Za-z0-9_]+\.[a-z0-9_]+)"', source) if key.split(".")[0] in prefixes}


def pristine_stub(tmp_path: Path, notebook: str) -> Path:
    """The notebook's stub file as committed (git show HEAD:...), copied into tmp_path: the working copy may hold a
    learner's answers."""
    name = check.NOTEBOOKS[notebook][1]
    committed = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:exercises/{name}"], capture_output=True,
                               text=True, check=True).stdout
    (tmp_path / name).write_text(committed, encoding="utf-8")
    return tmp_path / name


def write_learner_file(tmp_path: Path, notebook: str, source: str) -> Path:
    """A learner's exercise file for `notebook` in tmp_path."""
    path = tmp_path / check.NOTEBOOKS[notebook][1]
    path.write_text(source, encoding="utf-8")
    return path


@pytest.fixture(scope="module", autouse=True)
def quiet_libraries(toy_dir):
    """The grader's quiet output for this module only: logger levels, warning filters and the libraries' own
    verbosity are put back afterwards, so the tests that follow still see their logs."""
    import datasets
    import transformers

    levels = {name: logging.getLogger(name).level for name in check.QUIET_LOGGERS}
    verbosity, bars = transformers.utils.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    with warnings.catch_warnings():
        check.silence_libraries()
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    transformers.utils.logging.set_verbosity(verbosity)
    if bars:
        datasets.enable_progress_bars()


def test_make_check_exercises_accepts_the_reference_implementation_quietly():
    """`make check-exercises SOLUTION=reference`: every grader passes llmtrain's code, nothing else is printed."""
    run = subprocess.run([sys.executable, "-m", "exercises.check", "--solution", "reference"], cwd=ROOT,
                         env=script_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""
    lines = [line.strip() for line in run.stdout.splitlines() if line.startswith("  [")]
    assert lines == [f"[{check.PASSED}] {e.name}" for e in check.EXERCISES], run.stdout


@pytest.mark.parametrize("name", list(EXERCISES))
def test_every_grader_accepts_a_right_answer_written_independently(name):
    result = check.grade(EXERCISES[name], mistakes.RIGHT_ANSWERS[name])
    assert (result.status, result.message) == (check.PASSED, "")


@pytest.mark.parametrize("name, wrong, key", PLANTED, ids=[f"{k}-{w.__name__}" for _, w, k in PLANTED])
def test_grader_rejects_a_planted_mistake_with_its_message(name, wrong, key):
    result = check.grade(EXERCISES[name], wrong)
    assert (result.status, result.key) == (check.FAILED, key), result.message
    assert re.search(r"[\u4e00-\u9fff]", result.message), "a grader's message is in Chinese"


def test_every_grader_message_is_drawn_by_a_planted_mistake():
    source = "\n".join(p.read_text(encoding="utf-8") for p in sorted(GRADERS_DIR.glob("*.py")))
    keys = message_keys(source, set(EXERCISES) | {"common"})
    assert len(keys) > 100
    assert keys == {key for _, _, key in PLANTED}


def test_there_are_at_least_two_exercises_per_notebook_and_twelve_in_all():
    per_notebook = {nb: [e.name for e in check.EXERCISES if e.notebook == nb] for nb in check.NOTEBOOKS}
    assert all(len(names) >= 2 for names in per_notebook.values()), per_notebook
    assert len(check.EXERCISES) >= 12
    assert set(mistakes.RIGHT_ANSWERS) == set(EXERCISES)
    assert all(sum(name == n for n, _, _ in PLANTED) >= 3 for name in EXERCISES)


@pytest.mark.parametrize("notebook", sorted(check.NOTEBOOKS))
def test_the_committed_stubs_report_not_implemented(notebook, tmp_path):
    stub = pristine_stub(tmp_path, notebook)
    results = check.grade_notebook(notebook, "learner", exercises_dir=tmp_path)
    assert [r.exercise.name for r in results] == [e.name for e in check.EXERCISES if e.notebook == notebook]
    for result in results:
        assert (result.status, result.key) == (check.NOT_IMPLEMENTED, "check.not_implemented"), result.message
        assert "还没实现" in result.message and stub.name in result.message


def test_the_committed_stubs_make_the_exit_code_nonzero(tmp_path, monkeypatch, capsys):
    pristine_stub(tmp_path, "6.5")
    monkeypatch.setattr(check, "EXERCISES_DIR", tmp_path)
    assert check.main(["--notebook", "6.5"]) == 1
    assert capsys.readouterr().out.count("[未实现]") == 3


@pytest.mark.parametrize("notebook", sorted(check.NOTEBOOKS))
def test_the_committed_stubs_have_llmtrains_signatures(notebook, tmp_path):
    module = check.load_learner_file(pristine_stub(tmp_path, notebook))
    for exercise in (e for e in check.EXERCISES if e.notebook == notebook):
        stub, reference = getattr(module, exercise.name), exercise.reference()
        if inspect.isclass(reference):
            for method in ("__init__", "merge", "unmerge", "forward"):
                assert inspect.signature(getattr(stub, method)).parameters.keys() == \
                       inspect.signature(getattr(reference, method)).parameters.keys(), method
        else:
            ours, theirs = inspect.signature(stub).parameters, inspect.signature(reference).parameters
            assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


@pytest.mark.parametrize("source", [
    "from llmtrain.dpo import dpo_loss, sequence_logprobs, dpo_batch_loss\n",
    "import llmtrain.dpo as course\n\ndef dpo_loss(*args):\n    return course.dpo_loss(*args)\n",
    "def dpo_loss(*args):\n    from llmtrain.dpo import dpo_loss as theirs\n    return theirs(*args)\n",
    "import llmtrain.dpo\n\ndef helper(*args):\n    return llmtrain.dpo.dpo_loss(*args)\n\n"
    "def dpo_loss(*args):\n    return helper(*args)\n",
])
def test_an_answer_that_imports_the_course_implementation_is_told_so(tmp_path, source):
    write_learner_file(tmp_path, "6.4", source)
    result = next(r for r in check.grade_notebook("6.4", "learner", tmp_path) if r.exercise.name == "dpo_loss")
    assert (result.status, result.key) == (check.FAILED, "check.borrowed")
    assert "课程自己的实现 llmtrain.dpo.dpo_loss" in result.message


@pytest.mark.parametrize("notebook, source, name, used", [
    ("6.3", "from llmtrain.lora import LoraLinear as Base\n\nclass LoraLinear(Base):\n    pass\n", "LoraLinear",
     "llmtrain.lora.LoraLinear"),
    ("6.3", "from peft.tuners.lora import Linear\n\nclass LoraLinear(Linear):\n    pass\n", "LoraLinear",
     "peft.tuners.lora.Linear"),
    ("6.2", "from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening\n\n"
            "def make_collator(tokenizer, packing):\n    return DataCollatorWithFlattening() if packing else "
            "DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)\n", "make_collator",
     "transformers.DataCollator"),
])
def test_an_answer_built_on_a_library_implementation_is_told_so(tmp_path, notebook, source, name, used):
    write_learner_file(tmp_path, notebook, source)
    result = next(r for r in check.grade_notebook(notebook, "learner", tmp_path) if r.exercise.name == name)
    assert (result.status, result.key) == (check.FAILED, "check.borrowed")
    assert used in result.message


def test_an_exception_in_the_learners_code_is_one_line_with_its_place():
    result = check.grade(EXERCISES["dpo_loss"], mistakes.dpo_loss_raising)
    assert (result.status, result.key) == (check.FAILED, "check.raised")
    assert "\n" not in result.message and "exercise_mistakes.py 第" in result.message
    assert "dpo_loss_raising" in result.message


def test_a_learner_file_that_does_not_import_fails_each_exercise_with_the_error(tmp_path):
    write_learner_file(tmp_path, "6.4", "def dpo_loss(:\n")
    results = check.grade_notebook("6.4", "learner", exercises_dir=tmp_path)
    assert [(r.status, r.key) for r in results] == [(check.FAILED, "check.import_failed")] * 3
    assert all("ex6_4_dpo.py 无法导入:SyntaxError" in r.message for r in results)


def test_a_learner_file_without_an_exercise_is_told_its_name(tmp_path):
    write_learner_file(tmp_path, "6.5", "from exercise_mistakes import group_advantages, k3_kl\n")
    results = {r.exercise.name: r for r in check.grade_notebook("6.5", "learner", tmp_path)}
    assert results["group_advantages"].status == results["k3_kl"].status == check.PASSED
    assert (results["grpo_loss"].status, results["grpo_loss"].key) == (check.FAILED, "check.missing_name")
    assert "找不到 grpo_loss" in results["grpo_loss"].message


def test_the_check_itself_gives_only_the_messages_tested_above():
    keys = message_keys((ROOT / "exercises" / "check.py").read_text(encoding="utf-8"), {"check"})
    assert keys == {"check.borrowed", "check.not_implemented", "check.raised", "check.import_failed",
                    "check.missing_name"}


def test_a_learner_file_with_right_answers_passes_and_the_exit_code_says_so(tmp_path, monkeypatch, capsys):
    write_learner_file(tmp_path, "6.5", "from exercise_mistakes import group_advantages, grpo_loss, k3_kl\n")
    monkeypatch.setattr(check, "EXERCISES_DIR", tmp_path)
    assert check.main(["--notebook", "6.5"]) == 0
    assert capsys.readouterr().out.count("[通过]") == 3
