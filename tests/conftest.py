"""Shared fixtures: the toy assets, `make run`'s toy pipeline trained once per session, the notebooks run once per
session, and ways to run the scripts.

Tests that train, launch or need the session's pipeline carry `@pytest.mark.slow` (explicitly, in their module);
`make test-fast` deselects them. The pipeline trains in the background from the session's first test on, while the
tests that do not need it run (fast ones first); the notebooks run in the background from the first slow test on,
on the CPU time the other slow tests leave idle (their checks come last).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SAMPLE_PRETRAIN = SAMPLE / "pretrain.jsonl"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Smaller than the notebooks' own defaults, so that the one run stays short.
TOY_PARAMETERS = {
    "6.1_pretrain": {"MAX_STEPS": 60, "RUN_DEEPSPEED": False, "EXPOSURES": 120},
    "6.2_sft": {"EPOCHS": 1, "PAD_ID_STEPS": 10, "BENCH_STEPS": 1},
    "6.3_lora": {"EPOCHS": 2},
    "6.4_dpo": {"SEED": 42},  # its defaults: the style needs all 4 DPO epochs to show (3: ~65% of replies)
    "6.5_grpo": {"LOOP_STEPS": 4, "EVAL_EVERY": 2, "TWO_PASS_STEPS": 2},
}


@pytest.fixture(scope="session")
def world():
    """data/sample/build_samples.py as a module: the toy world's people, attributes and phrasings."""
    spec = importlib.util.spec_from_file_location("build_samples", SAMPLE / "build_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_samples"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def toy_dir() -> Path:
    """artifacts/toy as `make toy` builds it (deterministic; built here when a test run starts without it)."""
    from llmtrain.toy import ensure_toy_assets

    return ensure_toy_assets()


@pytest.fixture(scope="session")
def toy_tokenizer(toy_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(toy_dir)


def stop_server(proc: subprocess.Popen, seconds: float) -> None:
    """Terminate a server the tests started; kill it when it has not exited after `seconds`."""
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()


def script_env(**extra: str) -> dict[str, str]:
    """The environment scripts run in: offline, the venv first on PATH, one thread per process."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_script(args: list[str], timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """Run a command from the project root in a new process; stdout and stderr together in `.stdout`."""
    return subprocess.run(
        args, cwd=ROOT, env=script_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )


@dataclass
class CliResult:
    """What a script's `main` did when run in this process: its exit code and what it logged or printed."""

    returncode: int
    stdout: str


def run_cli_in_process(script: str, argv: list[str], capsys, caplog) -> CliResult:
    """Run code/<script>'s `__main__` path (`run_cli(main)`) in this process with `argv`, as the command line would.

    For the scripts' error paths: the same code as a launch, without paying a new interpreter and a fresh import of
    torch, transformers, DeepSpeed and TRL for each message. `run_cli` ends every run with SystemExit.
    """
    path = ROOT / "code" / script
    spec = importlib.util.spec_from_file_location(f"course_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from llmtrain.errors import run_cli

    saved = sys.argv
    sys.argv = [str(path), *argv]
    caplog.set_level(logging.INFO)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(module.main)
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    logged = "\n".join(f"{r.levelname} - {r.name} - {r.getMessage()}" for r in caplog.records)
    return CliResult(int(exit_info.value.code or 0), "\n".join((out.out, out.err, logged)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast tests first: they run while the session's toy pipeline trains in the background (`toy_pipeline_started`);
    the slow ones wait for it (`slow_tests_wait_for_the_pipeline_and_start_the_notebooks`), and the notebooks' checks
    come last: the notebooks run in the background meanwhile (`notebook_runs`)."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is not None, "notebook_runs" in item.fixturenames))


def some_collected_test_uses(session: pytest.Session, fixture: str) -> bool:
    return any(fixture in item.fixturenames for item in session.items)


@dataclass
class BackgroundPipeline:
    """`make run`'s toy pipeline training into `run_dir`, its output in `log`; this process meanwhile computes on
    one thread (a second OpenMP thread here, spinning beside the pipeline's two ranks on 2 cores, made tests that
    take 0.4 s alone take 10 s), and on `threads` again once it is done. This process runs at nice 10 from then on,
    and what it starts too: the pipeline's ranks keep their cores while the fast tests take what they leave idle."""

    process: subprocess.Popen
    run_dir: Path
    log: Path
    threads: int

    def wait(self) -> int:
        returncode = self.process.wait(timeout=3600)
        torch.set_num_threads(self.threads)
        return returncode


@pytest.fixture(scope="session", autouse=True)
def toy_pipeline_started(request, tmp_path_factory):
    """Starts `make run`'s toy pipeline (code/toy_pipeline.sh) in a background process when the session's first test
    is set up, if any collected test needs it (`toy_run`) and TEST_TOY_RUN_DIR does not name a finished one; the
    fast tests run meanwhile (`pytest_collection_modifyitems`). Stops it if the session ends first."""
    if os.environ.get("TEST_TOY_RUN_DIR") or not some_collected_test_uses(request.session, "toy_run"):
        yield None
        return
    request.getfixturevalue("toy_dir")
    run_dir = tmp_path_factory.mktemp("toy-run")
    # A build lock as a run killed while compiling DeepSpeed's shm op leaves it: without its removal every
    # launch would wait forever (test_pretrain_script checks the pipeline's log for the removal).
    lock = Path(sys.prefix) / "torch_extensions" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    log = run_dir.with_name(f"{run_dir.name}.log")   # beside the folder, which the pipeline empties first
    with log.open("w") as out:
        process = subprocess.Popen(["bash", "code/toy_pipeline.sh"], cwd=ROOT, env=script_env(TOY_RUN_DIR=str(run_dir)),
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pipeline = BackgroundPipeline(process, run_dir, log, torch.get_num_threads())
    torch.set_num_threads(1)
    os.nice(10)
    yield pipeline
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()


@pytest.fixture(autouse=True)
def slow_tests_wait_for_the_pipeline_and_start_the_notebooks(request, toy_pipeline_started):
    """A slow test trains or launches DeepSpeed: it starts only once the session's pipeline is done. Two DeepSpeed
    runs side by side on 2 cores spin on each other's allreduce: the QLoRA launch took 153 s instead of 19 s.
    The first slow test also starts the notebooks (`notebook_runs`) when the session checks them."""
    if not request.node.get_closest_marker("slow"):
        return
    if toy_pipeline_started is not None:
        toy_pipeline_started.wait()
    if some_collected_test_uses(request.session, "notebook_runs"):
        request.getfixturevalue("notebook_runs")


@pytest.fixture(scope="session")
def toy_run(toy_pipeline_started) -> Path:
    """`make run`'s toy pipeline (code/toy_pipeline.sh: every stage through its launcher, each scored), trained once
    for the whole session into a temporary folder (started in the background by `toy_pipeline_started`; this waits
    for it); TOY_RUN_DIR points there for everything the session starts afterwards (notebooks included), so nothing
    reads or writes the learner's output/toy. About 5 minutes on 2 cores.

    TEST_TOY_RUN_DIR=<folder of a finished pipeline> (e.g. output/toy after `make run`) reuses that run instead of
    training one: for working on the tests, and for the browser tests after `make test` in .ci/run.
    """
    reused = os.environ.get("TEST_TOY_RUN_DIR")
    if reused:
        run_dir = Path(reused).resolve()
        assert (run_dir / "scorecard.json").is_file(), f"TEST_TOY_RUN_DIR={reused}: no finished pipeline there"
    else:
        pipeline = toy_pipeline_started
        assert pipeline.wait() == 0, pipeline.log.read_text()[-5000:]
        run_dir = pipeline.run_dir
    os.environ["TOY_RUN_DIR"] = str(run_dir)
    return run_dir


def execute_on_toy_parameters(ipynb: Path, folder: Path) -> nbformat.NotebookNode:
    """papermill in a process of its own: the kernel on one thread (OMP_NUM_THREADS=1, `script_env`) under Linux's
    SCHED_IDLE policy (`chrt --idle`: it runs when nothing else wants the CPU), its figures and outputs in `folder`
    (not images/ or the learner's output/notebooks), on the session's pipeline (TOY_RUN_DIR)."""
    executed = folder / ipynb.name
    result = run_script(
        ["chrt", "--idle", "0", sys.executable, "-m", "papermill", str(ipynb), str(executed),
         "-y", json.dumps(TOY_PARAMETERS[ipynb.stem]), "--cwd", str(ipynb.parent), "-k", "python3",
         "--no-progress-bar"],
        timeout=1200, COURSE_IMAGES_DIR=str(folder / "images"), COURSE_OUTPUT_DIR=str(folder / "output"))
    assert result.returncode == 0, f"{ipynb.name} failed under papermill:\n{result.stdout[-5000:]}"
    return nbformat.read(executed, as_version=4)


@pytest.fixture(scope="session")
def notebook_runs(toy_run, tmp_path_factory):
    """Every notebook under papermill (`execute_on_toy_parameters`), started in the background by the first slow test
    once the session's pipeline is trained, as many side by side as there are cores (at least 2); their checks
    (test_notebooks.py) come last. The kernels take the CPU time the other slow tests leave idle (a quarter of it on
    2 cores, measured: servers waiting, single-process steps) and the cores once they are done: pytest 9:07 instead
    of 11:20 on an idle 2-core machine, with the pipeline's scoring in the background too (code/toy_pipeline.sh).
    A kernel on one thread gives the same checked outputs as the committed ones, made on two (test_notebooks.py)."""
    lanes = max(2, min(len(NOTEBOOKS), os.cpu_count() or 1))
    with ThreadPoolExecutor(lanes) as pool:
        yield {ipynb.stem: pool.submit(execute_on_toy_parameters, ipynb, tmp_path_factory.mktemp(ipynb.stem))
               for ipynb in NOTEBOOKS}
