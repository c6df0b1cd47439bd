"""minipeft: parameter-efficient fine-tuning from scratch in NumPy + autograd.

The rule: ``import minipeft as mp`` gives the workflow every method shares (below); a
method and anything that belongs to one idea is imported from the file that holds it,
so the import line says which file to open:

    from minipeft.methods.lora import LoRA           # the method, beside its equation
    from minipeft.merge import merge_methods         # folding θ into the weights
    from minipeft.methods.layout import token_rows   # which rows are whose prompts
    from minipeft.chapter import setup               # what a chapter does first

Exported here:
    Config, init_params, new_head, forward, features      the backbone (transformer/)
    split, combine, count, tree                            θ/φ trees (tree.py)
    value_and_grad                                         O(P) gradients of trees (autodiff.py)
    fit, evaluate, predict, loss, adam_init, adam_step     training (train.py)
    NonFiniteError, DivergenceWarning                      training faults (train.py)
    load_task, Task, TASKS, DOWNSTREAM                     real data (data.py)
    attach, trainable, count_trainable, Method,            PEFT methods (methods/): the protocol
      method_class, LinearProbe, FullFineTune              and the two baselines
    backend, nn                                            arrays, dtypes, devices; the primitives
"""
from . import backend, nn, tree
from .autodiff import value_and_grad
from .data import DOWNSTREAM, TASKS, Task, load_task
from .methods import FullFineTune, LinearProbe, Method, attach, count_trainable, method_class, trainable
from .train import DivergenceWarning, NonFiniteError, adam_init, adam_step, evaluate, fit, loss, predict
from .transformer import Config, features, forward, init_params, new_head
from .tree import combine, count, split

from .version import __version__

__all__ = [
    "Config", "DOWNSTREAM", "DivergenceWarning", "NonFiniteError", "FullFineTune", "LinearProbe", "Method", "TASKS", "Task", "adam_init",
    "adam_step", "attach", "backend", "combine", "count", "count_trainable", "evaluate", "features", "fit",
    "forward", "init_params", "load_task", "loss", "method_class", "new_head", "nn", "predict", "split",
    "trainable", "tree", "value_and_grad",
]
