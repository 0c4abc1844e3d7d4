"""Kubeflow plumbing: the SparkApplication launcher, kfp.local runs, compile, submit and compare."""
