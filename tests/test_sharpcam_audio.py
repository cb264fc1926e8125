"""`sharpcam --input call.mp4 --output sharp.mp4` keeps the call's sound, or says it is dropped.

The dev extras install imageio-ffmpeg, so these tests run wherever the suite does; clips
with sound are made by that ffmpeg from its own test sources."""
import subprocess

import numpy as np
import pytest

from conftest import video_facts, write_clip
from sharpcam import audio
from sharpcam.cli import main

TONE_HZ = 440
SECONDS = 1.0
FPS = 10


@pytest.fixture(scope="module")
def ffmpeg():
    found = audio.find_ffmpeg()
    assert found, 'no ffmpeg: install the dev extras (pip install ".[dev]"), which bring imageio-ffmpeg'
    return found


def clip_with_sound(ffmpeg, path, video_codec, audio_codec):
    """A one-second 64x48 test picture at 10 fps with a 440 Hz tone."""
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc=size=64x48:rate={FPS}:duration={SECONDS}",
                    "-f", "lavfi", "-i", f"sine=frequency={TONE_HZ}:sample_rate=48000:duration={SECONDS}",
                    "-c:v", video_codec, "-c:a", audio_codec, str(path)], check=True)
    return path


def sound_of(ffmpeg, path, rate=8000):
    """The first audio stream of ``path`` as mono samples at ``rate``; empty if it has none."""
    result = subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-i", str(path),
                             "-map", "0:a:0?", "-ac", "1", "-ar", str(rate), "-f", "s16le", "-"],
                            capture_output=True)
    if result.returncode != 0 and b"does not contain any stream" in result.stderr:
        return np.zeros(0)  # the optional map found no audio stream
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return np.frombuffer(result.stdout, "<i2").astype(np.float64)


def loudest_hz(samples, rate=8000):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * rate / len(samples)


@pytest.mark.parametrize("clip_name,codecs,output_name", [
    ("call.mp4", ("mpeg4", "aac"), "sharp.mp4"),       # the usual case: the sound is copied
    ("call.mkv", ("mjpeg", "libopus"), "sharp.avi"),   # .avi cannot hold Opus: encoded anew
])
def test_the_sound_of_the_input_is_in_the_output(clip_name, codecs, output_name, ffmpeg, tmp_path,
                                                 capsys, test_model):
    clip = clip_with_sound(ffmpeg, tmp_path / clip_name, *codecs)
    out = tmp_path / output_name
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 0
    assert f"the sound of {clip} goes into {out}" in capsys.readouterr().err
    assert video_facts(out) == (video_facts(clip)[0], (48, 64, 3))  # the pictures are all there
    sound = sound_of(ffmpeg, out)
    assert len(sound) / 8000 == pytest.approx(SECONDS, abs=0.1)
    assert loudest_hz(sound) == pytest.approx(TONE_HZ, abs=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([clip_name, output_name])


def test_a_run_stopped_early_keeps_the_sound_of_the_frames_written(ffmpeg, tmp_path, monkeypatch,
                                                                   test_model):
    from sharpcam.sources import VideoFileSource
    clip = clip_with_sound(ffmpeg, tmp_path / "call.mp4", "mpeg4", "aac")
    real_read, reads = VideoFileSource.read, []

    def read(self):
        reads.append(1)
        if len(reads) == 4:
            raise KeyboardInterrupt  # Ctrl-C after three frames
        return real_read(self)

    monkeypatch.setattr(VideoFileSource, "read", read)
    out = tmp_path / "sharp.mp4"
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 130
    assert video_facts(out)[0] == 3
    # Three frames at 10 fps: 0.3 s of sound, give or take one audio packet, not the whole second.
    assert len(sound_of(ffmpeg, out)) / 8000 == pytest.approx(3 / FPS, abs=0.05)


def test_without_ffmpeg_the_output_says_the_sound_is_dropped(ffmpeg, tmp_path, monkeypatch, capsys,
                                                             test_model):
    import sharpcam.cli
    clip = clip_with_sound(ffmpeg, tmp_path / "call.mp4", "mpeg4", "aac")
    monkeypatch.setattr(sharpcam.cli, "find_ffmpeg", lambda: None)
    out = tmp_path / "sharp.mp4"
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "sound in" in ln]
    assert line.startswith("sharpcam: no ffmpeg here") and "dropped" in line and "sharpcam[audio]" in line
    assert video_facts(out)[0] == 10 and len(sound_of(ffmpeg, out)) == 0


def test_an_input_without_sound_needs_no_word_about_it(ffmpeg, tmp_path, capsys, test_model):
    clip = write_clip(tmp_path / "silent.avi", frames=3)
    assert not audio.has_audio(ffmpeg, clip)
    assert main(["--input", str(clip), "--output", str(tmp_path / "o.avi"), "--model", str(test_model)]) == 0
    err = capsys.readouterr().err
    assert "the sound of" not in err and "sound in" not in err


def test_a_failed_mux_keeps_the_pictures_and_says_why(ffmpeg, tmp_path, monkeypatch, capsys, test_model):
    import sharpcam.sinks
    clip = clip_with_sound(ffmpeg, tmp_path / "call.mp4", "mpeg4", "aac")
    monkeypatch.setattr(sharpcam.sinks, "mux_audio", lambda *args: "Invalid data found")
    out = tmp_path / "sharp.mp4"
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert "could not be added" in line and "Invalid data found" in line and "pictures only" in line
    assert video_facts(out)[0] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call.mp4", "sharp.mp4"]
