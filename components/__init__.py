"""Thin Kubeflow components: each calls one ``cehrgpt`` entry point and logs its metrics."""
