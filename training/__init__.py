"""Training-side commands: teacher training, distillation, evaluation and ONNX export.
Each is one file, run as `python -m training.<command>`."""
