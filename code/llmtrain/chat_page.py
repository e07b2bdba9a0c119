"""6.2-6.5 side by side: load every stage's model, stream its reply with the probability of each token, and grade
the reply by the scorecard's own rule when the question is in an eval file.

`code/chat_page.py` is the web page (Gradio) over this module; nothing here imports Gradio, so the
loading, generation and grading that the page shows are plain functions a test can call.

- Stages: `make run`'s five (`llmtrain.toy_run.TOY_STAGES`) or any model folder, optionally with a LoRA adapter.
  A stage that cannot be loaded keeps its error message (which folder, what is wrong, what to do) instead of
  stopping the page.
- Replies: greedy by default with exactly `llmtrain.evaluation.generate_replies`'s prompt, stop token and
  arguments, so the page's greedy reply is the scorecard's; `generate` runs with a streamer that hands over
  each new token together with the probability the model gave it (softmax of its raw logits).
- Verdicts: `grade_replies` for the scorecard's questions (data/sample/eval.jsonl), `score_replies` with
  `fact_candidates` for the RL task's (data/sample/grpo_eval.jsonl and grpo_eval_new_phrasing.jsonl): the graders
  themselves (`llmtrain.grading`, a reply about the wrong person is wrong), never a copy.
"""

from __future__ import annotations

import html
import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from llmtrain import PROJECT_ROOT
from llmtrain.errors import LlmtrainError
from llmtrain.evaluation import SCORECARD_COLUMNS, SHARE_COLUMNS, read_scorecard
from llmtrain.grading import fact_candidates, grade_replies, load_eval_questions, load_prompt_dataset, score_replies
from llmtrain.lora import load_adapter
from llmtrain.modeling import load_tokenizer
from llmtrain.tokenizer import DEFAULT_SYSTEM_MESSAGE, IM_END
from llmtrain.toy_run import TOY_STAGES, require_toy_model, toy_run_dir

logger = logging.getLogger(__name__)

SCORECARD_MAX_NEW_TOKENS = 48  # what code/evaluate.py generates per reply (scorecard_row, add_rl_task_column)


# ---------------------------------------------------------------- stages: what to load, and loading it
@dataclass(frozen=True)
class StageSpec:
    """One model to talk to: a row name (the scorecard's, where it has one), a model folder, an optional adapter."""

    name: str
    model: Path
    adapter: Path | None = None


def toy_stage_specs() -> list[StageSpec]:
    """`make run`'s five stages under `toy_run_dir()`, named as their scorecard rows."""
    run = toy_run_dir()
    return [StageSpec(s.name, run / s.model, run / s.adapter if s.adapter else None) for s in TOY_STAGES]


def parse_stage(text: str) -> StageSpec:
    """A `--stage` value: `[NAME=]MODEL_DIR[,ADAPTER_DIR]`; without NAME, evaluate.py's default row name
    (the adapter's folder name, else the model's), so the row of a scorecard written without --name is found."""
    name, _, paths = text.rpartition("=")
    model, _, adapter = paths.partition(",")
    if not model.strip():
        raise LlmtrainError(f"--stage {text!r}: no model folder. Write --stage [NAME=]MODEL_DIR[,ADAPTER_DIR], "
                            "e.g. --stage sft=output/toy/sft or --stage output/toy/sft,output/toy/dpo-lora.")
    model_path = Path(model.strip())
    adapter_path = Path(adapter.strip()) if adapter.strip() else None
    return StageSpec(name.strip() or (adapter_path or model_path).resolve().name, model_path, adapter_path)


@dataclass
class Stage:
    """A loaded stage (model and tokenizer), or the message that says why it could not be loaded."""

    spec: StageSpec
    model: PreTrainedModel | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    error: str | None = None
    base_of_adapter: str | None = None  # base_model_name_or_path in adapter_config.json, shown beside the stage

    @property
    def source(self) -> str:
        """The folders this stage was loaded from, relative to the repository when inside it."""
        return short_path(self.spec.model) + (f" + {short_path(self.spec.adapter)}" if self.spec.adapter else "")


def short_path(path: Path | str) -> str:
    """`path` relative to the repository when it lies inside it (output/toy/sft), else as given."""
    absolute = Path(path).resolve()
    return str(absolute.relative_to(PROJECT_ROOT)) if absolute.is_relative_to(PROJECT_ROOT) else str(path)


def _check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise LlmtrainError(f"Model folder {path} does not exist. Pass a saved model folder (config.json, weights "
                            "and tokenizer files), e.g. output/toy/sft after `make run`.")
    if not (path / "config.json").is_file():
        raise LlmtrainError(f"Model folder {path} has no config.json: it is not a saved model. Pass the "
                            "output_dir of a training run (for a LoRA run: its merged/ folder, or the base model "
                            "with the run as the adapter).")


def _check_adapter_folder(path: Path) -> str | None:
    """The base model the adapter was trained on (adapter_config.json's base_model_name_or_path)."""
    config = path / "adapter_config.json"
    if not config.is_file():
        raise LlmtrainError(f"Adapter folder {path} has no adapter_config.json. Pass the output_dir of a LoRA run "
                            "(finetune.py --use_lora, dpo.py or grpo.py), e.g. output/toy/sft-lora.")
    return json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")


def load_stage(spec: StageSpec, toy: bool = False, device: str = "cpu") -> Stage:
    """Load one stage the way code/evaluate.py does (`from_pretrained`, then `load_adapter`), on `device`.

    Bad input (a missing folder, a folder that holds no model, an adapter for another base) gives a Stage
    with `error` set instead of an exception, so the page shows it beside the stages that did load. For
    `toy` stages a missing model names `make run`, which trains them.
    """
    stage = Stage(spec)
    try:
        if toy:
            for folder in (spec.model, spec.adapter):
                if folder is not None:
                    require_toy_model(str(folder.relative_to(toy_run_dir())))
        _check_model_folder(spec.model)
        if spec.adapter is not None:
            stage.base_of_adapter = _check_adapter_folder(spec.adapter)
        stage.tokenizer = load_tokenizer(str(spec.model))
        try:
            model = AutoModelForCausalLM.from_pretrained(spec.model)  # trust_remote_code stays off
        except (OSError, ValueError) as err:
            raise LlmtrainError(f"Model folder {spec.model}: cannot load a causal language model ({err}).") from err
        if spec.adapter is not None:
            try:
                model = load_adapter(model, str(spec.adapter))
            except (ValueError, KeyError) as err:
                raise LlmtrainError(f"The adapter in {spec.adapter} does not fit the model in {spec.model} ({err}). "
                                    "Load the base model it was trained on (base_model_name_or_path in its "
                                    "adapter_config.json).") from err
        stage.model = model.to(device).eval()
    except LlmtrainError as err:
        stage.error, stage.tokenizer = str(err), None
        logger.error("Stage %s: %s", spec.name, err)
    return stage


# ---------------------------------------------------------------- generation: streamed, with token probabilities
@dataclass(frozen=True)
class GenerationSettings:
    """How replies are generated: greedy (the scorecard's way) unless `sample`; seed makes sampling repeatable."""

    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    max_new_tokens: int = SCORECARD_MAX_NEW_TOKENS
    system_message: str = DEFAULT_SYSTEM_MESSAGE


@dataclass
class Piece:
    """What the page shades: the text of one or more tokens (several when a character spans tokens), the
    probability the model gave them (the product over those tokens) and each token's own probability."""

    text: str
    prob: float
    token_ids: list[int]
    token_probs: list[float]
    special: bool = False  # a special token (<|im_end|>, <|endoftext|>): shown, but not part of the reply text


@dataclass
class Reply:
    """A reply as it grows: its text (what evaluate.py records: decoded up to <|im_end|>, special tokens
    dropped), whether it stopped at <|im_end|>, and its pieces with their probabilities."""

    text: str = ""
    stopped: bool = False
    pieces: list[Piece] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    done: bool = False


class _TokenQueueStreamer(BaseStreamer):
    """Hands each generated token id, with the probability from the step's raw logits, to a queue.

    `generate` calls `put` with the prompt first, then with each new token right after the forward pass
    whose logits the hook in `stream_reply` kept.
    """

    def __init__(self, tokens: queue.Queue, last_logits: list[torch.Tensor]) -> None:
        self.tokens, self.last_logits, self.prompt_seen = tokens, last_logits, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        token = int(value.reshape(-1)[0])
        prob = torch.softmax(self.last_logits[-1].float(), dim=-1)[token].item()
        self.tokens.put((token, prob))

    def end(self) -> None:
        self.tokens.put(None)


def chat_inputs(tokenizer: PreTrainedTokenizerBase, question: str,
                system_message: str = DEFAULT_SYSTEM_MESSAGE) -> dict[str, torch.Tensor]:
    """6.2: the prompt as `generate_replies` renders it: a batch of one [system, user] chat, generation prompt added."""
    chats = [[{"role": "system", "content": system_message}, {"role": "user", "content": question}]]
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True, padding=True)
    finally:
        tokenizer.padding_side = padding_side


def stream_reply(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, question: str,
                 settings: GenerationSettings = GenerationSettings()) -> Iterator[Reply]:
    """6.2-6.5: one reply to `question`, yielded (a copy) after every new token; the last one has `done` set.

    Greedy uses `generate_replies`'s call (same prompt, `eos_token_id=<|im_end|>`, pad id, max_new_tokens),
    so its tokens are the scorecard's; the streamer only watches. A token's probability is the softmax of
    the model's raw logits at that step (temperature 1, before any sampling setting), kept by a forward hook.
    """
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    inputs = {k: v.to(model.device) for k, v in chat_inputs(tokenizer, question, settings.system_message).items()}
    last_logits: list[torch.Tensor] = []  # the latest forward pass's logits at the last position

    def keep_logits(module: torch.nn.Module, args: tuple, output: Any) -> None:
        last_logits[:] = [output.logits[0, -1].detach()]

    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    hook = core.register_forward_hook(keep_logits)
    tokens: queue.Queue = queue.Queue()
    failure: list[BaseException] = []
    kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=im_end,
                                  pad_token_id=tokenizer.pad_token_id,
                                  streamer=_TokenQueueStreamer(tokens, last_logits))
    if settings.sample:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    else:
        kwargs.update(do_sample=False)

    def run() -> None:
        try:
            if settings.sample:
                torch.manual_seed(settings.seed)
            with torch.no_grad():
                model.generate(**inputs, **kwargs)
        except BaseException as err:  # handed to the consumer, which raises it where the page can report it
            failure.append(err)
            tokens.put(None)

    model.eval()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    reply, pending = Reply(), []  # pending: (id, prob) of tokens that end halfway through a character
    special_ids = set(tokenizer.all_special_ids)
    try:
        while (item := tokens.get()) is not None:
            token, prob = item
            reply.token_ids.append(token)
            if token in special_ids:
                reply.pieces.append(Piece(tokenizer.convert_ids_to_tokens(token), prob, [token], [prob], special=True))
                reply.stopped = token == im_end
            else:
                pending.append((token, prob))
                text = tokenizer.decode(reply.token_ids, skip_special_tokens=True)
                if not text.endswith("\ufffd") and text.startswith(reply.text):
                    reply.pieces.append(_piece(text[len(reply.text):], pending))
                    reply.text, pending = text, []
            yield _snapshot(reply)
    finally:
        worker.join()
        hook.remove()
    if failure:
        raise failure[0]
    final = tokenizer.decode(reply.token_ids, skip_special_tokens=True)  # generation ends at <|im_end|>, if at all
    if pending or final != reply.text:  # a reply that ends halfway through a character keeps its U+FFFD, as evaluate.py
        reply.pieces.append(_piece(final[len(reply.text):] if final.startswith(reply.text) else final, pending))
        reply.text = final
    reply.done = True
    yield _snapshot(reply)


def _snapshot(reply: Reply) -> Reply:
    """A copy of the growing reply, so what was yielded does not change afterwards."""
    return replace(reply, pieces=list(reply.pieces), token_ids=list(reply.token_ids))


def _piece(text: str, tokens: list[tuple[int, float]]) -> Piece:
    joint = 1.0
    for _, p in tokens:
        joint *= p
    return Piece(text, joint, [t for t, _ in tokens], [p for _, p in tokens])


# ---------------------------------------------------------------- verdicts: the scorecard's graders
@dataclass(frozen=True)
class Verdict:
    """A reply graded the way its eval file is graded on the scorecard."""

    source: str          # which file and split the question is from
    expected: str
    correct: bool
    styled: bool         # ends with the style suffix (graded without it)


class Graders:
    """Look a question up in the scorecard's eval file and the RL task's held-out prompt files; grade a reply to it
    with that file's grader: `grade_replies` (strict rule, every answer of the file a candidate, the asked person)
    or `score_replies` (the reward GRPO trains with, `fact_candidates` of the file)."""

    def __init__(self, eval_file: Path | None, rl_eval_files: list[Path], style_suffix: str | None) -> None:
        self.style_suffix = style_suffix or None
        self.eval_file = eval_file
        self.questions = load_eval_questions(str(eval_file)) if eval_file else []
        self.eval_index = {q.question: i for i, q in enumerate(self.questions)}
        self.rl: dict[str, tuple[Any, int, str]] = {}  # question -> (its file's rows, its row, the file's name)
        for path in rl_eval_files:
            rows = load_prompt_dataset([str(path)])
            for i, prompt in enumerate(rows["prompt"]):
                self.rl[prompt[-1]["content"]] = (rows, i, path.name)

    def source(self, question: str) -> str | None:
        """Which file (and split or task) `question` is from; None when it is in none of them."""
        question = question.strip()
        if question in self.eval_index:
            return f"{self.eval_file.name} ({self.questions[self.eval_index[question]].split})"
        if question in self.rl:
            rows, i, name = self.rl[question]
            return f"{name} (RL task, {rows['task'][i]})"
        return None

    def grade(self, question: str, reply: str, stopped: bool) -> Verdict | None:
        """The verdict on `reply`, or None when `question` is in none of the files."""
        question = question.strip()
        if question in self.eval_index:
            i = self.eval_index[question]
            # grade_replies takes its candidates (every answer of the file) from the questions it is given, so it
            # gets them all; the other replies are empty and their grades unused.
            replies = [("", False)] * len(self.questions)
            replies[i] = (reply, stopped)
            graded = grade_replies(self.questions, replies, self.style_suffix)[i]
            return Verdict(self.source(question), graded["answer"], graded["correct"], graded["styled"])
        if question in self.rl:
            rows, i, _ = self.rl[question]
            styled = bool(self.style_suffix) and reply.endswith(self.style_suffix)
            graded = reply.removesuffix(self.style_suffix) if self.style_suffix else reply  # as task_accuracy
            score = score_replies([graded], rows.select([i]), fact_candidates(rows))[0]
            return Verdict(self.source(question), rows["answer"][i], bool(score), styled)
        return None


def recorded_reply(row: dict[str, Any] | None, question: str) -> str | None:
    """The greedy reply a scorecard row recorded for `question` (evaluate.py keeps every reply), if any."""
    if not row:
        return None
    question = question.strip()
    for graded in row.get("replies", []):
        if graded["question"] == question:
            return graded["reply"]
    for graded in row.get("rl_heldout_replies", []) + row.get("rl_new_phrasing_replies", []):
        if graded["prompt"] == question:
            return graded["reply"]
    return None


def scorecard_rows(path: Path | None) -> dict[str, dict[str, Any]]:
    """The scorecard JSON's rows ({run name: row}), empty when there is none."""
    return read_scorecard(str(path)) if path else {}


def scorecard_cells(row: dict[str, Any]) -> list[tuple[str, str]]:
    """A scorecard row's metrics as (column title, value) in `format_scorecard`'s order and number format."""
    cells = []
    for key, title in SCORECARD_COLUMNS.items():
        value = row.get(key)
        if value is not None:
            cells.append((title, f"{value:.0%}" if key in SHARE_COLUMNS else f"{value:.3f}"))
    return cells


# ---------------------------------------------------------------- HTML of one stage's card
CARD_CSS = """
.stage-card {border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 12px; min-height: 14em; background: #fff;}
.stage-card h3 {margin: 0 0 2px 0; font-size: 1.05em;}
.stage-card .source {color: #57606a; font-size: 0.75em; word-break: break-all; margin-bottom: 8px;}
.stage-card .reply {font-size: 1.15em; line-height: 1.9; min-height: 3.8em; word-break: break-all;}
.stage-card .tok {border-radius: 3px; padding: 1px 0;}
.stage-card .tok.special {font-family: monospace; font-size: 0.7em; color: #57606a; border: 1px solid #d0d7de;
  margin: 0 2px; padding: 0 2px; white-space: nowrap;}
.stage-card .state {color: #57606a; font-style: italic;}
.stage-card .error {color: #b42318; white-space: pre-wrap; font-size: 0.9em;}
.stage-card .verdict {margin-top: 8px; padding: 4px 8px; border-radius: 4px; font-size: 0.9em;}
.stage-card .verdict.correct {background: #dafbe1; color: #116329;}
.stage-card .verdict.wrong {background: #ffebe9; color: #a40e26;}
.stage-card .recorded {font-size: 0.8em; color: #57606a; margin-top: 4px;}
.stage-card table.scorecard {margin-top: 8px; font-size: 0.78em; border-collapse: collapse; width: 100%;}
.stage-card table.scorecard td {padding: 1px 4px; border-top: 1px solid #eaeef2;}
.stage-card table.scorecard td {border-left: none; border-right: none;}
.stage-card table.scorecard td.value {text-align: right; width: 5em; font-variant-numeric: tabular-nums;}
.prob-legend .tok {padding: 1px 6px; border-radius: 3px; margin-right: 4px;}
"""


def shade(prob: float) -> str:
    """The background of a token the model gave probability `prob`: the less likely, the stronger the orange."""
    return f"rgba(255, 140, 0, {0.85 * (1.0 - prob):.3f})"


def legend_html() -> str:
    """What the shading means, with three sample shades."""
    swatches = "".join(f'<span class="tok" style="background: {shade(p)}">p = {p:.1f}</span>' for p in (0.1, 0.5, 0.9))
    return (f'<div class="prob-legend">每个 token 按模型给它的概率着色(原始 logits 的 softmax,温度 1):颜色越深,'
            f"模型越犹豫;鼠标停在 token 上看概率。{swatches}</div>")


def probability_title(piece: Piece) -> str:
    """The tooltip of a piece: its probability, and each token's when a character spans several tokens."""
    each = "" if len(piece.token_probs) == 1 else " (" + " × ".join(f"{p:.3f}" for p in piece.token_probs) + ")"
    return f"p = {piece.prob:.3f}{each}"


def card_html(stage: Stage, reply: Reply | None = None, verdict: Verdict | None = None,
              row: dict[str, Any] | None = None, recorded: str | None = None, state: str | None = None,
              error: str | None = None) -> str:
    """One stage's card: name and folders, the reply with each piece shaded by its probability, the verdict and
    the expected answer, whether the scorecard recorded the same reply, and the stage's scorecard row."""
    e = html.escape
    parts = [f'<div class="stage-card" data-stage="{e(stage.spec.name)}">', f"<h3>{e(stage.spec.name)}</h3>",
             f'<div class="source">{e(stage.source)}']
    if stage.base_of_adapter:
        parts.append(f"<br>适配器训练时的基座:{e(short_path(stage.base_of_adapter))}")
        trained_on = Path(stage.base_of_adapter)
        if trained_on.is_dir() and trained_on.resolve() != stage.spec.model.resolve():
            parts.append('<br><span class="error" data-role="base-warning">注意:这个适配器不是在这里加载的基座上训练的,'
                         "形状相同也未必是同一个模型</span>")
    parts.append("</div>")
    if stage.error or error:
        parts.append(f'<div class="error" data-role="error">无法{"加载" if stage.error else "生成"}:'
                     f"{e(stage.error or error)}</div>")
    elif reply is None:
        parts.append(f'<div class="reply" data-state="waiting"><span class="state">{e(state or "")}</span></div>')
    else:
        tokens = "".join(
            f'<span class="tok{" special" if p.special else ""}" style="background: {shade(p.prob)}" '
            f'title="{e(probability_title(p))}">{e(p.text)}</span>' for p in reply.pieces)
        status = "" if reply.done else '<span class="state"> …</span>'
        parts.append(f'<div class="reply" data-state="{"done" if reply.done else "streaming"}">{tokens}{status}</div>')
        if reply.done and not reply.stopped:
            parts.append(f'<div class="recorded">没有在 {e(IM_END)} 处停下(达到最大 token 数)</div>')
        if verdict is not None:
            mark = "✓ 答对" if verdict.correct else "✗ 答错"
            style = ",以结尾句结束(判分时去掉)" if verdict.styled else ""
            parts.append(f'<div class="verdict {"correct" if verdict.correct else "wrong"}" data-role="verdict" '
                         f'data-correct="{str(verdict.correct).lower()}">{mark}(严格判分{e(style)})· 标准答案:'
                         f'<b>{e(verdict.expected)}</b> · {e(verdict.source)}</div>')
        if recorded is not None and reply.done:
            same = "一致" if recorded == reply.text else f"不同(成绩单:{e(recorded)})"
            parts.append(f'<div class="recorded" data-role="recorded">与成绩单记录的贪心回答{same}</div>')
    if row:
        cells = "".join(f'<tr><td>{e(title)}</td><td class="value">{e(value)}</td></tr>'
                        for title, value in scorecard_cells(row))
        parts.append(f'<table class="scorecard" data-role="scorecard"><tr><td colspan="2"><b>成绩单</b></td></tr>'
                     f"{cells}</table>")
    else:
        parts.append('<div class="recorded">成绩单里没有这一行</div>')
    parts.append("</div>")
    return "".join(parts)


def reply_record(stage: Stage, reply: Reply | None, verdict: Verdict | None, error: str | None = None) -> dict:
    """One stage's result as plain data (the page's JSON output, which the Gradio client reads)."""
    record: dict[str, Any] = {"stage": stage.spec.name, "error": stage.error or error}
    if reply is not None:
        record.update(reply=reply.text, stopped=reply.stopped, done=reply.done,
                      tokens=[{"text": p.text, "prob": p.prob, "ids": p.token_ids, "token_probs": p.token_probs,
                              "special": p.special} for p in reply.pieces])
    record["verdict"] = asdict(verdict) if verdict else None
    return record
