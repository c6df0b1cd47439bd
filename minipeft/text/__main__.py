"""``python -m minipeft.text``: print the README's table of text tasks (sizes counted from the files)."""
from .tasks import task_table

print(task_table())
