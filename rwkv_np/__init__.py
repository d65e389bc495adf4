"""rwkv_np: a CPU-only RWKV-4 engine on NumPy and Numba, faithful to Hugging Face transformers."""
__version__ = "0.1.0"

import os as _os

from .threads import set_threads  # first: it sets the OpenMP threads' spin before they start
from .config import RwkvConfig
from .errors import ConfigError, InputError, ModelFileError, RwkvError
from .generation import GenerateOutput, TextStream, generate
from .model import RwkvCausalLMOutput, RwkvForCausalLM, RwkvModel, RwkvOutput
from .state_file import load_state, save_state
from .tokenizer import ByteTokenizer, StreamDecoder, Tokenizer

# The small byte-level model trained on tinyshakespeare that ships inside the package.
DEMO_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "assets", "tiny-shakespeare")
