"""The sharpcam command's answers to bad input: one clear line, a non-zero exit, nothing lost."""
import os

import pytest

from conftest import half_size_model, one_channel_model, write_clip
from sharpcam.cli import main


def run_cli(args):
    """The exit code of ``sharpcam ARGS`` run in this process, argparse's exits included."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    return rc


def one_error_line(err: str) -> str:
    """The single error line of a failed run; fails if there is a traceback or a second error."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    assert errors[0].startswith(("sharpcam: error:", "sharpcam bench: error:")), err
    return errors[0]


@pytest.mark.parametrize("make_model", [half_size_model, one_channel_model])
def test_model_with_wrong_output_shape_fails_its_first_run_in_one_line(make_model, tmp_path, capsys):
    model = make_model(tmp_path / "wrong.onnx")
    clip = write_clip(tmp_path / "clip.avi", frames=3)
    out = tmp_path / "out.avi"
    rc = run_cli(["--input", clip, "--output", out, "--model", model])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1
    assert "shape" in line and "wrong.onnx" in line
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("option,value", [
    ("--sizes", "0x0"), ("--sizes", "10"), ("--sizes", "64x48x3"), ("--sizes", "ax48"),
    ("--tile", "-5"), ("--tile", "0"), ("--seconds", "-1"), ("--threads", "0"),
    ("--fps", "0"), ("--fps", "fast"),
])
def test_bench_options_are_checked_like_the_main_command(option, value, capsys, test_model):
    args = ["bench", "--model", test_model, "--seconds", "0", "--sizes", "64x48", option, value]
    rc = run_cli(args)
    line = one_error_line(capsys.readouterr().err)
    assert rc != 0 and option in line


def test_bench_with_a_model_that_fails_its_first_run(tmp_path, capsys):
    rc = run_cli(["bench", "--model", half_size_model(tmp_path / "half.onnx"), "--seconds", "0",
                  "--sizes", "64x48"])
    assert rc == 1 and "shape" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", [[], ["bench", "--seconds", "0", "--sizes", "64x48"]])
def test_tile_smaller_than_its_context_is_refused(command, tmp_path, capsys, test_model):
    # The test model's 12 px radius puts a 12 px margin on each side of every tile.
    clip = write_clip(tmp_path / "clip.avi", frames=2)
    args = command or ["--input", clip, "--output", tmp_path / "out.avi"]
    rc = run_cli(args + ["--model", test_model, "--tile", "7"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "--tile 7" in line and "--tile 24" in line and "--tile 0" in line
    assert not (tmp_path / "out.avi").exists()


def test_tiles_are_refused_for_a_model_that_reads_the_whole_frame(tmp_path, capsys):
    from conftest import build_test_model
    model = build_test_model(tmp_path / "framed.onnx", reads_whole_frame=1)
    clip = write_clip(tmp_path / "clip.avi", frames=2)
    rc = run_cli(["--input", clip, "--output", tmp_path / "out.avi", "--model", model, "--tile", "256"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "reads the whole frame" in line and "--tile 0" in line
    assert not (tmp_path / "out.avi").exists()
    # bench measures it whole only, without being asked
    rc = run_cli(["bench", "--model", model, "--seconds", "0", "--sizes", "64x48"])
    out = capsys.readouterr().out
    assert rc == 0 and "model whole" in out and "model tile" not in out


def test_model_that_outputs_nan_warns_once_and_passes_frames_through(tmp_path, capsys):
    from conftest import nan_model, video_facts
    clip = write_clip(tmp_path / "clip.avi", frames=5)
    out = tmp_path / "out.avi"
    assert run_cli(["--input", clip, "--output", out, "--model", nan_model(tmp_path / "nan.onnx")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "not finite" in line]
    assert len(warnings) == 1 and warnings[0].startswith("sharpcam: warning:"), err
    assert video_facts(out) == (5, (96, 160, 3))
    # Unsharpened, not black: the same bytes as a run with the model switched off.
    off = tmp_path / "off.avi"
    assert run_cli(["--input", clip, "--output", off, "--model", nan_model(tmp_path / "n2.onnx"),
                    "--mode", "off"]) == 0
    assert out.read_bytes() == off.read_bytes()


@pytest.mark.parametrize("spelling", ["same", "relative", "hard link"])
def test_output_that_is_the_input_is_refused(spelling, tmp_path, monkeypatch, capsys, test_model):
    import os
    clip = write_clip(tmp_path / "clip.avi", frames=3)
    before = clip.read_bytes()
    monkeypatch.chdir(tmp_path)
    output = {"same": clip, "relative": "./sub/../clip.avi", "hard link": tmp_path / "link.avi"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "hard link":
        os.link(clip, output)
    rc = run_cli(["--input", clip, "--output", output, "--model", test_model])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "--input" in line and "overwrite" in line
    assert clip.read_bytes() == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc and /sys; run on Linux")
@pytest.mark.parametrize("output", ["/proc/x.mp4", "/sys/x.avi"])
def test_output_in_a_folder_nobody_can_write_names_the_os_error(output, capsys, test_model):
    # root passes os.access() everywhere, so only creating a file tells the truth.
    rc = run_cli(["--demo", "--output", output, "--model", test_model, "--max-frames", "1"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "cannot create" in line and "encode" not in line
    assert ("No such file" in line) or ("Permission denied" in line) or ("Read-only" in line)


def test_output_that_is_a_directory_says_so(tmp_path, capsys, test_model):
    (tmp_path / "videos").mkdir()
    rc = run_cli(["--demo", "--output", tmp_path / "videos", "--model", test_model])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "is a directory" in line and "unknown video type" not in line


def test_input_that_is_a_directory_says_so(tmp_path, capsys, test_model):
    (tmp_path / "videos").mkdir()
    rc = run_cli(["--input", tmp_path / "videos", "--output", tmp_path / "o.avi", "--model", test_model])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "is a directory" in line and "not found" not in line


@pytest.mark.parametrize("case", ["truncated mp4", "missing camera"])
def test_stderr_holds_only_sharpcams_lines(case, tmp_path, test_model):
    """OpenCV and FFmpeg print their own warnings ("moov atom not found") next to ours
    unless they are silenced; a fresh process, as FFmpeg's log level is set once per process."""
    import subprocess
    import sys
    whole = write_clip(tmp_path / "whole.mp4", frames=5)
    broken = tmp_path / "cut.mp4"  # an interrupted download: the index (moov atom) is missing
    broken.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    args = {"truncated mp4": ["--input", str(broken)],
            "missing camera": ["--camera", "97", "--no-vcam"]}[case]
    proc = subprocess.run([sys.executable, "-m", "sharpcam", *args, "--output", str(tmp_path / "o.avi"),
                           "--model", str(test_model)], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("sharpcam: error:"), proc.stderr
    assert all(line.startswith("sharpcam:") for line in lines), proc.stderr


def test_frame_size_beyond_free_memory_is_refused_before_allocating(tmp_path, monkeypatch, capsys,
                                                                    test_model):
    import sharpcam.cli
    monkeypatch.setattr(sharpcam.cli, "available_memory", lambda: 64 * 2**20, raising=False)
    out = tmp_path / "out.avi"
    rc = run_cli(["--demo", "--width", "2000", "--height", "2000", "--max-frames", "1",
                  "--output", out, "--model", test_model])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "2000x2000" in line and "memory" in line and "--width" in line
    assert not out.exists()


def test_opened_source_too_large_for_free_memory_is_refused(tmp_path, monkeypatch, capsys, test_model):
    # A camera or file decides its own size; it is checked once known, before the warm-up.
    import sharpcam.cli
    clip = write_clip(tmp_path / "clip.avi", frames=2, size=(160, 96))
    monkeypatch.setattr(sharpcam.cli, "available_memory", lambda: 2**20, raising=False)
    rc = run_cli(["--input", clip, "--output", tmp_path / "out.avi", "--model", test_model])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "160x96" in line and "memory" in line


@pytest.fixture
def refuse_writes_to(monkeypatch):
    """os.access answers 'no write permission' for the paths added to the returned set.
    It stands in for a folder or file the user may not write: chmod cannot make one in a
    test run as root (as CI's is), whom every permission lets through."""
    refused = set()
    real_access = os.access

    def access(path, mode, **kw):
        if mode & os.W_OK and os.path.abspath(path) in refused:
            return False
        return real_access(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    return refused


def test_output_in_a_folder_without_write_permission_says_so(tmp_path, refuse_writes_to, capsys,
                                                             test_model):
    from sharpcam.sinks import check_output_path
    folder = tmp_path / "readonly"
    folder.mkdir()
    refuse_writes_to.add(str(folder))
    out = folder / "out.avi"
    assert "no permission" in check_output_path(str(out))
    rc = run_cli(["--demo", "--output", out, "--model", test_model, "--max-frames", "1"])
    line = one_error_line(capsys.readouterr().err)
    assert rc == 1 and "no permission to write there" in line and str(out) in line
    assert list(folder.iterdir()) == []


def test_output_file_without_write_permission_says_so(tmp_path, refuse_writes_to):
    from sharpcam.sinks import check_output_path
    out = tmp_path / "kept.avi"
    out.write_bytes(b"an earlier recording")
    assert check_output_path(str(out)) is None  # writable: fine to replace
    refuse_writes_to.add(str(out))
    assert "no permission" in check_output_path(str(out))
    assert out.read_bytes() == b"an earlier recording"
