"""sharpcam must run without torch: nothing in the package may import it."""
import subprocess
import sys


def test_nothing_in_sharpcam_imports_torch():
    code = (
        "import sys, sharpcam, sharpcam.cli, sharpcam.engine, sharpcam.tiling, sharpcam.controls, "
        "sharpcam.sharpen, sharpcam.sources, sharpcam.sinks, sharpcam.pipeline, sharpcam.bench, "
        "sharpcam.precision; "
        "sharpcam.quiet; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_runs_without_torch():
    code = ("import sys\nfrom sharpcam.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--demo" in result.stdout and "space on/off" in result.stdout


def test_default_model_path_is_inside_the_package():
    import os
    import sharpcam
    assert sharpcam.DEFAULT_MODEL == os.path.join(os.path.dirname(sharpcam.__file__), "assets", "student.onnx")
    assert os.path.getsize(sharpcam.DEMO_IMAGE) <= 200 * 1024
