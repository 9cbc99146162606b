"""Attach tuilm's Monitor to other trainers: Hugging Face (`tuilm.integrations.hf`), Lightning
(`tuilm.integrations.lightning`). Each module imports its framework, so import only the one you use."""
