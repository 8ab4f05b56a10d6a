"""Bridges to other libraries (Hugging Face transformers, ...), each imported on demand."""
