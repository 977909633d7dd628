"""`igmu tasks`: the CatIGMU tree and its tasks."""

from __future__ import annotations

import argparse

from igmu.tasks import builtin_tasks, load_task
from igmu.taxonomy import load_taxonomy
from igmu.taxonomy.tree import Node


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "tasks",
        help="print the CatIGMU tree with its tasks, or one task",
        description="Print the CatIGMU hierarchy (family -> concept kind -> tasks).",
    )
    sub = parser.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")
    show = sub.add_parser(
        "show",
        help="a task's place in the tree, guidance and prompt sets",
        description="Show a task's CatIGMU path, guidance and prompt sets.",
    )
    show.add_argument("task", help="built-in task name or path to a task YAML file")
    show.set_defaults(handler=run_show)
    parser.set_defaults(handler=run_tree)


def run_tree(args: argparse.Namespace) -> int:
    taxonomy = load_taxonomy()
    tasks = builtin_tasks()
    by_node: dict[str, list] = {}
    for task in tasks:
        by_node.setdefault(task.node, []).append(task)
    lines = [f"CatIGMU v{taxonomy.version}: {taxonomy.root.title}"]

    def walk(node: Node, depth: int) -> None:
        kind = f" [{node.kind}]" if node.kind else ""
        if depth:
            lines.append(f"{'  ' * depth}{node.id}{kind}: {node.title}")
        for child in node.children:
            walk(child, depth + 1)
        for task in by_node.get(node.id, []):
            sets = ", ".join(f"{n}={ps.size()}" for n, ps in task.prompt_sets.items())
            lines.append(
                f"{'  ' * (depth + 1)}- {task.name} (v{task.version}): {task.title} [{sets}]"
            )

    walk(taxonomy.root, 0)
    print("\n".join(lines))
    return 0


def run_show(args: argparse.Namespace) -> int:
    task = load_task(args.task)
    taxonomy = load_taxonomy()
    path = " -> ".join(n.id for n in taxonomy.path(task.node)[1:])
    print(f"task: {task.name} (version {task.version})  source: {task.source}")
    print(f"title: {task.title}")
    print(f"CatIGMU: {path} -> {task.name}   concept kind: {task.kind}")
    print(
        f"concept: {task.concept_name}; words removed for stripped prompts: "
        f"{', '.join(task.concept_words)}"
    )
    print("guidance (inherited, task overrides applied):")
    for key, value in task.guidance.items():
        print(f"  {key}: {value}")
    print("prompt sets:")
    for name, prompt_set in task.prompt_sets.items():
        derived = f" (derived from {prompt_set.derived_from})" if prompt_set.derived_from else ""
        classes = ", ".join(f"{c}={len(p)}" for c, p in prompt_set.classes)
        print(f"  {name}: {prompt_set.size()} prompts{derived}; classes: {classes}")
        print(f"    e.g. {prompt_set.classes[0][1][0]!r}")
    if task.unlearning is not None:
        prompt, anchor = task.unlearning.erase[0]
        print(
            f"unlearning prompts (for UCE/ESD, never evaluated): {len(task.unlearning.erase)} "
            f"erase pairs, {len(task.unlearning.preserve)} preserve prompts"
        )
        print(f"    e.g. {prompt!r} -> {anchor!r}")
    return 0
