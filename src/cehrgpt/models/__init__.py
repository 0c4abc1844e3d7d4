"""CEHR-GPT model artifacts: the word-level tokenizer with token metadata, and GPT-2 model helpers."""
