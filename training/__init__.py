"""Training-side commands: teacher training, distillation, evaluation and ONNX export.
Each is one file, run as `python -m training.<command>`.

OpenMP threads wait passively here unless the user says otherwise (OMP_WAIT_POLICY):
spinning threads fight every other process for the cores. Measured on a busy 2-core
machine, the tiny teacher ran at 1.1 samples/s with two spinning threads, 5.1 with two
passive ones and 9.8 with one (`OMP_NUM_THREADS=1`, the fastest while something else runs).
Set here, in the package every command imports first, because the OpenMP runtime reads it
once, when torch loads it.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
