"""The shipped formats (SavedModel, TFLite, ONNX, TensorRT) and how each is measured."""
