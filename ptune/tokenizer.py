"""`load_tokenizer(folder, chat_format=None)`: the tokenizer of a model folder, as its family's object.

Each family's tokenizer lives with its family in ``ptune.families`` (chatglm2.py: the SentencePiece one of
ChatGLM2/3, glm4.py: GLM-4's tiktoken one, native.py: transformers' own); detection is
``ptune.families.registry.detect_family``.  Every tokenizer has the `ChatTokenizer` attributes: ``family``,
``encode``, ``decode``, ``pad_token_id``, ``eos_token_id``, ``stop_token_ids``, ``special_ids``,
``vocab_size``, ``files``. (The tiny tokenizers of the tests and the demo are made by ``tools/``, outside the
package.)
"""

from ptune.families.base import ChatTokenizer
from ptune.families.registry import load_tokenizer

__all__ = ["ChatTokenizer", "load_tokenizer"]
