"""shotnet.models: the shipped ONNX classifier, its model card, and training code."""
