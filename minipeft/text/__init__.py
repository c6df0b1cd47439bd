"""Real text for the language-model side: data sets read from shipped files, tasks, length batching.

    datasets.py   parsers of the shipped files -> TextData (texts, labels, label_names)
    tasks.py      TextTask: fixed splits, few_shot(k, seed), full(), max_len; load_text_task
    batching.py   truncate / warn_truncated to max_len; bucket_batches by token length
    tokenizer.py  Tokenizer: a model's tokenizer.json -> (ids, type ids, mask); models.minilm loads it
    bpe.py        BPETokenizer: byte-level BPE + ChatML from a GGUF's metadata; models.smollm2 builds it
"""
from .batching import TruncationWarning, bucket_batches, padded_tokens, random_batches, truncate, warn_truncated
from .datasets import (INSTALL, TextData, load_20newsgroups, load_bbc_news, load_election_tweets, load_reuters,
                       package_dir, read_tab)
from .tasks import FEW_SHOT_K, FEW_SHOT_SEEDS, FULL_CAP, GAP_TASK, TEST_CAP, TEXT_TASKS, VAL_CAP, TextTask, load_text_task, task_table

__all__ = [
    "FEW_SHOT_K", "FEW_SHOT_SEEDS", "FULL_CAP", "GAP_TASK", "INSTALL", "TEST_CAP", "TEXT_TASKS", "TextData", "TextTask",
    "TruncationWarning", "VAL_CAP", "bucket_batches", "load_20newsgroups", "load_bbc_news", "load_election_tweets",
    "load_reuters", "load_text_task", "package_dir", "padded_tokens", "random_batches", "read_tab", "task_table",
    "truncate", "warn_truncated",
]
