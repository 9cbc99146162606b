"""Models that leave tuilm (and come back): Hugging Face directories and GGUF files (docs/export.md).

arch: which transformers architecture computes a tuilm model exactly, and the tensor names both ways.
hf: the directory transformers loads (config, safetensors, tokenizer, generation config, model card).
gguf: the single file llama.cpp loads, written with llama.cpp's own `gguf` package.
"""
