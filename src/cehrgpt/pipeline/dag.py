"""A picture of a compiled pipeline: its DAG as a Mermaid flowchart (docs/kubeflow.md embeds one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _node_id(task_id: str) -> str:
    return task_id.replace("-", "_")


def _label(task: Mapping[str, Any]) -> str:
    return task.get("taskInfo", {}).get("name", "").replace('"', "'")


def mermaid_from_ir(spec: Mapping[str, Any]) -> str:
    """The DAG of a compiled pipeline spec (the first YAML document) as ``flowchart TD`` text.

    Loops (``dsl.ParallelFor``) and conditions (``dsl.If``) become subgraphs,
    labelled with their display name (and the loop's parallelism limit).
    """
    components = spec["components"]
    lines = ["flowchart TD"]
    edges: list[str] = []

    def emit(tasks: Mapping[str, Any], indent: str) -> None:
        for task_id, task in sorted(tasks.items()):
            component = components[task["componentRef"]["name"]]
            if "dag" in component:
                title = _label(task)
                limit = task.get("iteratorPolicy", {}).get("parallelismLimit")
                if limit:
                    title += f" (≤ {limit} at once)"
                lines.append(f'{indent}subgraph {_node_id(task_id)}["{title}"]')
                emit(component["dag"]["tasks"], indent + "  ")
                lines.append(f"{indent}end")
            else:
                lines.append(f'{indent}{_node_id(task_id)}["{_label(task)}"]')
            edges.extend(
                f"  {_node_id(upstream)} --> {_node_id(task_id)}"
                for upstream in task.get("dependentTasks", [])
            )

    emit(spec["root"]["dag"]["tasks"], "  ")
    return "\n".join(lines + edges) + "\n"
