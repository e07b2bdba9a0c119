"""The chat page in headless Chromium, as a learner uses it: type a question, press 提问, wait for every stage's
reply, read the replies and verdicts off the page, and keep a screenshot (images/chat_page.png in the README)."""

from __future__ import annotations

import time

import pytest
from chromium_driver import chromium, images_dir, outside_requests, report
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from test_chat_page import chat_page_server, recorded

from llmtrain.evaluation import read_scorecard
from llmtrain.toy_run import SCORECARD_FILE, TOY_STAGES

pytestmark = pytest.mark.slow

READ_CARDS = """
return Array.from(document.querySelectorAll('.stage-card')).map(card => {
  const verdict = card.querySelector('[data-role=verdict]');
  const recorded = card.querySelector('[data-role=recorded]');
  const reply = card.querySelector('.reply');
  return {stage: card.dataset.stage, state: reply ? reply.dataset.state : null,
          reply: Array.from(card.querySelectorAll('.reply .tok:not(.special)')).map(t => t.textContent).join(''),
          shaded: card.querySelectorAll('.reply .tok[title^="p = "]').length,
          verdict: verdict ? verdict.innerText : null, correct: verdict ? verdict.dataset.correct : null,
          recorded: recorded ? recorded.innerText : null,
          scorecard: (card.querySelector('[data-role=scorecard]') || {}).innerText || null};
});
"""


def test_ask_every_stage_in_chromium(toy_run, request):
    rows = read_scorecard(str(toy_run / SCORECARD_FILE))
    # held out (the fact is only in the pretraining text); in the README's run the stages disagree on it
    question = "曹若溪的职业是什么?"
    with chat_page_server([], toy_run) as url, chromium() as driver:
        start = time.monotonic()
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        box = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#question textarea")))
        assert len(driver.execute_script(READ_CARDS)) == len(TOY_STAGES)
        box.send_keys(question)
        driver.find_element(By.CSS_SELECTOR, "#ask").click()
        wait.until(lambda d: "完成" in d.find_element(By.ID, "status").text)
        cards = driver.execute_script(READ_CARDS)
        seconds = time.monotonic() - start

        assert [c["stage"] for c in cards] == [s.name for s in TOY_STAGES]
        for card in cards:
            expected = recorded(rows[card["stage"]], question)
            assert card["state"] == "done"
            assert card["reply"] == expected["reply"], card
            assert card["correct"] == str(expected["correct"]).lower(), card
            assert ("✓ 答对" if expected["correct"] else "✗ 答错") in card["verdict"]
            assert f"标准答案:{expected['answer']}" in card["verdict"]
            assert card["recorded"] == "与成绩单记录的贪心回答一致"
            assert card["shaded"] > 0 and "heldout acc" in card["scorecard"]
        assert cards[0]["correct"] == "false"  # the base model has no chat format: never right (scorecard: 0%)

        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1600, height + 40)
        screenshot = images_dir() / "chat_page.png"
        assert driver.save_screenshot(str(screenshot))
        assert outside_requests(driver) == [], "the page loaded something from outside this machine"
    report(request, f"chat page: {len(cards)} stages answered {question!r} in {seconds:.1f} s (page load included); "
                  f"replies and verdicts read off the page equal the scorecard's; screenshot {screenshot}")
