"""Tasks: versioned YAML files with a concept, its CatIGMU node and prompt sets."""

from igmu.tasks.loader import builtin_tasks, load_task, parse_task
from igmu.tasks.model import PROMPT_SET_KINDS, Prompt, PromptSet, Task

__all__ = [
    "PROMPT_SET_KINDS",
    "Prompt",
    "PromptSet",
    "Task",
    "builtin_tasks",
    "load_task",
    "parse_task",
]
