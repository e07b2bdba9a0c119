"""6.2-6.5: ask every stage the same question in a local web page and see the replies side by side.

    make chat                                   # make run's five stages (output/toy, or $TOY_RUN_DIR)
    python code/chat_page.py --stage sft=autodl-tmp/output/sft \
        --stage "LoRA=autodl-tmp/qwen-1.5b,autodl-tmp/output/sft-lora"   # any model folders [+ LoRA adapters]

Greedy replies by default, the way code/evaluate.py generates them (so they equal the scorecard's); sampling
settings in the page. Each token is shaded by the probability the model gave it. A question from the scorecard's
eval file or the RL task's held-out prompts gets each reply's verdict by the same strict rule, with the expected
answer; each stage shows its scorecard row. The page listens on 127.0.0.1 only unless --host says otherwise,
makes no share link, sends no analytics and loads nothing from the internet; models load from local folders only.
"""

from __future__ import annotations

import os

# Before gradio and transformers are imported: no usage analytics, no hub requests.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from llmtrain import PROJECT_ROOT  # noqa: E402
from llmtrain.chat_page import (CARD_CSS, SCORECARD_MAX_NEW_TOKENS, GenerationSettings, Graders, Stage,  # noqa: E402
                                card_html, legend_html, load_stage, parse_stage, recorded_reply, reply_record,
                                scorecard_rows, stream_reply, toy_stage_specs)
from llmtrain.errors import LlmtrainError, run_cli  # noqa: E402
from llmtrain.toy import toy_preset  # noqa: E402
from llmtrain.toy_run import SCORECARD_FILE, toy_run_dir  # noqa: E402

logger = logging.getLogger(__name__)
SAMPLE = PROJECT_ROOT / "data" / "sample"
GREEDY, SAMPLING = "贪心(与成绩单相同)", "采样"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", action="append", default=[], metavar="[NAME=]MODEL_DIR[,ADAPTER_DIR]",
                        help="A model folder to talk to, optionally with a LoRA adapter; repeat for several. "
                             "Default: make run's five stages in $TOY_RUN_DIR or output/toy.")
    parser.add_argument("--scorecard", type=Path,
                        help="Scorecard JSON whose rows (by stage name) are shown beside the replies. Default: "
                             f"{SCORECARD_FILE} of make run's folder when no --stage is given.")
    parser.add_argument("--eval_file", type=Path, default=SAMPLE / "eval.jsonl",
                        help="The scorecard's questions: a reply to one of them gets its verdict.")
    parser.add_argument("--rl_eval_files", type=Path, nargs="*",
                        default=[SAMPLE / "grpo_eval.jsonl", SAMPLE / "grpo_eval_new_phrasing.jsonl"],
                        help="6.5's held-out RL prompts: a reply to one of them gets the RL task's verdict.")
    parser.add_argument("--style_suffix", default=toy_preset()["TOY_STYLE_SUFFIX"],
                        help="6.4's closing sentence: replies are graded without it, as make run's scorecard "
                             "(empty: none).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on. The default serves this machine only; 0.0.0.0 exposes the "
                             "models to the network.")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="Where the models run (default: cuda when there is a GPU, else cpu).")
    return parser.parse_args(argv)


def example_questions(graders: Graders) -> list[str]:
    """A seen and a held-out scorecard question, an RL-task prompt, and everyday chat the eval files lack."""
    picks = []
    for split in ("sft_seen", "heldout"):
        picks += [q.question for q in graders.questions if q.split == split][:1]
    picks += list(graders.rl)[:1]
    return picks + ["你好"]


class ChatPage:
    """The loaded stages, their scorecard rows and the graders, and the handler that streams every reply."""

    def __init__(self, stages: list[Stage], rows: dict[str, dict[str, Any]], graders: Graders) -> None:
        self.stages, self.rows, self.graders = stages, rows, graders

    def idle_cards(self, state: str = "") -> list[str]:
        return [card_html(s, row=self.rows.get(s.spec.name), state=state) for s in self.stages]

    def answer(self, question: str, selected: list[str], mode: str, temperature: float, top_p: float, top_k: float,
               seed: float, max_new_tokens: float) -> Iterator[tuple]:
        """Stream every selected stage's reply to `question`, one stage after another; yields the status line,
        every card and the replies as data."""
        question = (question or "").strip()
        if not question:
            yield ("请先输入一个问题。", *self.idle_cards(), [])
            return
        loaded = [s.spec.name for s in self.stages if s.model is not None]
        chosen = [name for name in loaded if name in (selected or [])]
        if not chosen:
            yield ("请至少选择一个已加载的阶段。", *self.idle_cards(), [])
            return
        settings = GenerationSettings(sample=mode == SAMPLING, temperature=float(temperature), top_p=float(top_p),
                                      top_k=int(top_k), seed=int(seed), max_new_tokens=int(max_new_tokens))
        cards = [card_html(s, row=self.rows.get(s.spec.name),
                           state="等待中…" if s.spec.name in chosen else "未选择") for s in self.stages]
        records = []
        for i, stage in enumerate(self.stages):
            if stage.spec.name not in chosen:
                continue
            row = self.rows.get(stage.spec.name)
            recorded = recorded_reply(row, question) if not settings.sample else None
            reply = verdict = None
            try:
                for reply in stream_reply(stage.model, stage.tokenizer, question, settings):
                    verdict = self.graders.grade(question, reply.text, reply.stopped) if reply.done else None
                    cards[i] = card_html(stage, reply, verdict, row, recorded)
                    yield (f"正在生成:{stage.spec.name}", *cards, records)
                error = None
            except Exception as err:  # the page reports any failure of one stage and goes on with the next
                logger.exception("Stage %s failed", stage.spec.name)
                error = f"{type(err).__name__}: {err}"
                cards[i] = card_html(stage, row=row, error=error)
            records = records + [reply_record(stage, reply, verdict, error)]
        how = "贪心" if not settings.sample else (f"采样(温度 {settings.temperature},top-p {settings.top_p},"
                                                f"top-k {settings.top_k},种子 {settings.seed})")
        source = self.graders.source(question)
        note = f";这是 {source} 里的问题,按成绩单的严格规则判分" if source else ";这个问题不在评测文件里,不判分"
        yield (f"完成:{len(records)} 个阶段,{how},最多 {settings.max_new_tokens} 个新 token{note}。",
               *cards, records)


def build_page(page: ChatPage, examples: list[str]) -> gr.Blocks:
    """The Gradio page: question, stage choice and sampling settings; one card per stage, side by side."""
    loaded = [s.spec.name for s in page.stages if s.model is not None]
    with gr.Blocks(title="和每个阶段的模型对话") as demo:
        gr.Markdown("## 和每个阶段的模型对话\n同一个问题,依次问每个选中的阶段;默认贪心解码,"
                    "与 `code/evaluate.py` 生成成绩单的方式相同。")
        with gr.Row():
            question = gr.Textbox(label="问题", placeholder="例如:" + examples[0], scale=4, elem_id="question")
            ask = gr.Button("提问", variant="primary", scale=1, elem_id="ask")
        gr.Examples(examples, inputs=question, label="评测集里的问题与日常对话")
        selected = gr.CheckboxGroup(loaded, value=loaded, label="阶段", elem_id="stages")
        with gr.Accordion("解码设置", open=False):
            mode = gr.Radio([GREEDY, SAMPLING], value=GREEDY, label="解码方式")
            with gr.Row():
                temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="温度")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p")
                top_k = gr.Slider(0, 100, value=0, step=1, label="top-k(0:不限)")
                seed = gr.Number(value=0, precision=0, label="随机种子")
                max_new_tokens = gr.Slider(1, 256, value=SCORECARD_MAX_NEW_TOKENS, step=1,
                                           label="最多生成的 token 数(成绩单:48)")
        status = gr.Markdown(elem_id="status")
        gr.HTML(legend_html())
        with gr.Row(equal_height=False):
            cards = [gr.HTML(html, elem_classes="stage") for html in page.idle_cards()]
        with gr.Accordion("每个回答的数据(JSON)", open=False):
            records = gr.JSON(label="回答、逐 token 概率与判分")
        inputs = [question, selected, mode, temperature, top_p, top_k, seed, max_new_tokens]
        outputs = [status, *cards, records]
        ask.click(page.answer, inputs, outputs, api_name="answer")
        question.submit(page.answer, inputs, outputs, api_visibility="private")  # Enter: the same as 提问
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    toy = not args.stage
    specs = toy_stage_specs() if toy else [parse_stage(text) for text in args.stage]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise LlmtrainError(f"Two stages have the same name in {names}: name them, --stage NAME=MODEL_DIR[,ADAPTER].")
    for path, flag in ((args.eval_file, "--eval_file"), *((f, "--rl_eval_files") for f in args.rl_eval_files)):
        if path and not path.is_file():
            raise LlmtrainError(f"{flag} {path}: no such file.")
    scorecard = args.scorecard or (toy_run_dir() / SCORECARD_FILE if toy else None)
    if args.scorecard and not args.scorecard.is_file():
        raise LlmtrainError(f"--scorecard {args.scorecard}: no such file. code/evaluate.py --scorecard writes one.")
    graders = Graders(args.eval_file, args.rl_eval_files, args.style_suffix)
    stages = [load_stage(spec, toy=toy, device=args.device) for spec in specs]
    logger.info("Loaded %d of %d stages: %s", sum(s.model is not None for s in stages), len(stages),
                ", ".join(s.spec.name for s in stages if s.model is not None) or "none")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("Listening on %s: anyone who can reach this machine can use these models.", args.host)
    page = ChatPage(stages, scorecard_rows(scorecard), graders)
    demo = build_page(page, example_questions(graders))
    # Gradio 6's default theme serves its fonts itself (LocalFont); the browser test checks nothing else is fetched.
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False,
                                                   inbrowser=False, ssr_mode=False, css=CARD_CSS)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
