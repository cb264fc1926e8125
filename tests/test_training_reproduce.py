"""`python -m training.reproduce`: the recipe's steps, what it skips, resumes and refuses, and
how it compares its result with the bundled student."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from training import reproduce

ROOT = Path(__file__).resolve().parents[1]


def card_recipe_commands() -> list[str]:
    """The commands of MODEL_CARD.md's recipe block, continuation lines joined."""
    card = (ROOT / "MODEL_CARD.md").read_text()
    section = card[card.index("## The recipe"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    joined = re.sub(r"\\\n\s*", "", block)
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip().startswith("python -m")]


def test_the_model_cards_recipe_is_what_the_command_runs():
    commands = card_recipe_commands()
    assert commands[0] == "python -m training.reproduce"
    assert commands[1:] == [reproduce.shell_line(step) for step in reproduce.recipe(reproduce.Options())]


def test_the_steps_chain_each_run_into_the_next(tmp_path):
    steps = reproduce.recipe(reproduce.Options(out=str(tmp_path / "runs"), data=str(tmp_path / "photos")))
    assert [s.module for s in steps] == ["training.corpus"] + ["training.distill"] * 4 + [
        "training.quantize", "training.evaluate"]
    folders = [s.run_folder for s in steps[1:5]]
    assert folders == [tmp_path / "runs" / n for n in ("realtime", "realtime-int8", "realtime-text", "realtime-text-int8")]
    for before, after in zip(folders, steps[2:5]):
        assert after.args[after.args.index("--init") + 1] == str(before / "student.pt")
    for step in steps[3:5]:  # the text steps keep what their start did: anchored to it
        assert step.args[step.args.index("--anchor") + 1] == step.args[step.args.index("--init") + 1]
    assert steps[5].args[0] == str(folders[-1] / "student.onnx")
    assert all(s.args[s.args.index("--data") + 1] == str(tmp_path / "photos") for s in steps[1:5])


def finished(step: reproduce.Step) -> None:
    step.done_when.parent.mkdir(parents=True, exist_ok=True)
    step.done_when.write_text("{}")


class FinishedStep:
    """Stands in for a step's process: it 'finishes' its step at once, or exits with `returncode`."""
    opts = None
    returncode = 0

    def __init__(self, command, env):
        self.command, self.env = command, env
        type(self).calls.append((command, env))
        module = command[command.index("-m") + 1]
        for step in reproduce.recipe(self.opts) if self.returncode == 0 else []:
            if step.module == module and list(step.args) == [a for a in command[3:] if a != "--resume"]:
                finished(step)
        self.signals = []

    def wait(self):
        if self.signals_on_wait:
            os.kill(os.getpid(), self.signals_on_wait[0])  # as if the user pressed Ctrl-C meanwhile
        return self.returncode

    def send_signal(self, signum):
        self.signals.append(signum)
        type(self).passed_on.append(signum)


@pytest.fixture
def recorded(monkeypatch):
    """Every process the command starts, recorded and made to 'finish' its step."""
    class Fake(FinishedStep):
        calls, passed_on, signals_on_wait = [], [], []
    monkeypatch.setattr(reproduce.subprocess, "Popen", Fake)
    monkeypatch.setattr(reproduce, "comparison_line", lambda made, bundled: "compared")
    return Fake, Fake.calls


def test_finished_steps_are_skipped_and_an_interrupted_run_resumes(tmp_path, recorded):
    fake, calls = recorded
    opts = reproduce.Options(out=str(tmp_path / "runs"), data=str(tmp_path / "photos"), threads=2)
    fake.opts = opts
    steps = reproduce.recipe(opts)
    for step in steps[:3]:
        finished(step)
    (steps[3].run_folder / "last.pt").parent.mkdir(parents=True)
    (steps[3].run_folder / "last.pt").write_bytes(b"checkpoint")

    result = reproduce.main(["--out", opts.out, "--data", opts.data, "--threads", "2"])

    assert result["skipped"] == [s.name for s in steps[:3]]
    assert result["ran"] == [s.name for s in steps[3:]]
    commands = [c for c, _ in calls]
    assert commands[0][-1] == "--resume"  # the text run had a last.pt
    assert all("--resume" not in c for c in commands[1:])
    assert all(env["OMP_NUM_THREADS"] == "2" for _, env in calls)
    assert reproduce.main(["--out", opts.out, "--data", opts.data])["ran"] == []


def test_a_failed_step_stops_the_command_with_one_line(tmp_path, recorded):
    fake, calls = recorded
    fake.opts, fake.returncode = reproduce.Options(out=str(tmp_path / "runs"), data=str(tmp_path / "photos")), 3
    with pytest.raises(SystemExit) as stopped:
        reproduce.main(["--out", str(tmp_path / "runs"), "--data", str(tmp_path / "photos")])
    assert "step 'corpus' stopped (exit 3)" in str(stopped.value)
    assert "run python -m training.reproduce again" in str(stopped.value)
    assert len(calls) == 1


def test_ctrl_c_is_passed_on_to_the_step_and_waited_for(tmp_path, recorded):
    fake, calls = recorded
    fake.opts, fake.returncode = reproduce.Options(out=str(tmp_path / "runs"), data=str(tmp_path / "photos")), 130
    fake.signals_on_wait.append(signal.SIGINT)
    # Whatever handlers the test runner inherited (a job started in the background of a
    # shell ignores SIGINT) are the ones that must come back.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        reproduce.main(["--out", str(tmp_path / "runs"), "--data", str(tmp_path / "photos")])
    assert "interrupted during step 'corpus'" in str(stopped.value)
    assert fake.passed_on == [signal.SIGINT] and len(calls) == 1
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_runs_made_before_an_earlier_step_are_not_overwritten(tmp_path, recorded):
    fake, calls = recorded
    opts = reproduce.Options(out=str(tmp_path / "runs"), data=str(tmp_path / "photos"))
    fake.opts = opts
    steps = reproduce.recipe(opts)
    finished(steps[0])
    finished(steps[3])  # a text run on disk, but no base run it could have started from
    with pytest.raises(SystemExit) as refused:
        reproduce.main(["--out", opts.out, "--data", opts.data])
    assert str(steps[3].run_folder) in str(refused.value) and "step 'base'" in str(refused.value)
    assert calls == []


def test_a_folder_of_photos_without_a_manifest_is_not_made_a_corpus(tmp_path, recorded):
    photos = tmp_path / "mine"
    photos.mkdir()
    (photos / "holiday.png").write_bytes(b"png")
    with pytest.raises(SystemExit) as refused:
        reproduce.main(["--out", str(tmp_path / "runs"), "--data", str(photos)])
    assert "no corpus manifest.json" in str(refused.value) and "--folder" in str(refused.value)
    assert recorded[1] == [] and (photos / "holiday.png").read_bytes() == b"png"


def test_a_dry_run_runs_nothing(tmp_path, recorded, capsys):
    result = reproduce.main(["--out", str(tmp_path / "runs"), "--data", str(tmp_path / "photos"), "--dry-run"])
    assert recorded[1] == [] and len(result["ran"]) == 7
    assert "python -m training.distill --data" in capsys.readouterr().out


def test_the_comparison_names_identical_and_differing_weights(tmp_path):
    bundled = ROOT / "sharpcam" / "assets" / "student.onnx"
    model = onnx.load(str(bundled))
    same = tmp_path / "same.onnx"
    onnx.save(model, str(same))
    assert set(reproduce.weight_differences(same, bundled).values()) == {0.0}
    assert "identical" in reproduce.comparison_line(same, bundled)

    tensor = model.graph.initializer[0]
    changed = numpy_helper.to_array(tensor).copy()
    changed.flat[0] += 0.25
    tensor.CopyFrom(numpy_helper.from_array(changed, tensor.name))
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    differences = reproduce.weight_differences(other, bundled)
    assert differences[tensor.name] == pytest.approx(0.25)
    assert sum(d > 0 for d in differences.values()) == 1
    assert "1 of" in reproduce.comparison_line(other, bundled)


def test_a_step_made_again_makes_every_later_step_again(tmp_path, recorded):
    fake, calls = recorded
    opts = reproduce.Options(out=str(tmp_path / "runs"), data=str(tmp_path / "photos"))
    fake.opts = opts
    steps = reproduce.recipe(opts)
    for step in steps:
        finished(step)
    steps[5].done_when.unlink()  # a new INT8 file: the held-out table of the old one is out of date
    result = reproduce.main(["--out", opts.out, "--data", opts.data])
    assert result["ran"] == ["INT8", "held-out table"]


def test_the_command_line_lists_the_recipe_and_refuses_bad_threads(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["--out", str(tmp_path / "runs"), "--data", str(tmp_path / "photos")]
    listed = subprocess.run([sys.executable, "-m", "training.reproduce", *args, "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    steps = reproduce.recipe(reproduce.Options(out=args[1], data=args[3]))
    assert [line.split(": ", 1)[1] for line in listed.stdout.splitlines()] == [reproduce.shell_line(s) for s in steps]
    refused = subprocess.run([sys.executable, "-m", "training.reproduce", *args, "--threads", "0"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines() == [
        "error: --threads 0 must be at least 1"]
