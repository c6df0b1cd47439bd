"""Text: the tokenizer of a pretrained text model (``tokenizer``) and the text tasks."""
