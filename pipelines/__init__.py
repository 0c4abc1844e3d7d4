"""Kubeflow pipelines: training, synthetic_data and end_to_end (compiled into pipelines/compiled/)."""
