"""Interop with other PEFT libraries: HF peft 0.21 adapter directories on BertModel
(all-MiniLM-L6-v2). ``export_peft`` writes one, ``import_peft`` / ``from_peft`` read one;
the mapping of names and layouts is in ``interop.peft``'s docstring, the module names in
``interop.bert_names``, the bounded safetensors reader/writer in ``interop.tensorfile``."""
from .peft import BASE_MODEL, export_peft, from_peft, import_peft, to_peft, write_dir

__all__ = ["BASE_MODEL", "export_peft", "from_peft", "import_peft", "to_peft", "write_dir"]
