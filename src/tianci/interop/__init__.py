"""Use a tianci model elsewhere: export a run to Hugging Face transformers (`hf.py`) or to a GGUF
file for llama.cpp (`gguf.py`), and import a transformers folder back into a run.

`arch.py` decides which outside architecture represents a GPTConfig *exactly* (or refuses,
naming the switch) and maps the weights both ways; `tokens.py` writes tianci's tokenizers in the
formats the runtimes read. The runtimes themselves (transformers, gguf, llama-cpp-python) are the
optional `interop` extra and are imported only inside the functions that need them.
"""
