"""rwkv_np: a CPU-only RWKV engine on NumPy and Numba: RWKV-4 faithful to Hugging Face
transformers, later generations to BlinkDL's reference code and rwkv.cpp."""
__version__ = "0.2.0"

import os as _os

from .threads import set_threads  # first: it sets the OpenMP threads' spin before they start
from .errors import ConfigError, InputError, ModelFileError, RwkvError
from .generation import GenerateOutput, TextStream, generate
from .state_file import load_state, save_state
from .tokenizer import ByteTokenizer, StreamDecoder, Tokenizer, WorldTokenizer
from .v4.config import RwkvConfig
from .v4.model import RwkvCausalLMOutput, RwkvForCausalLM, RwkvModel, RwkvOutput

# The small byte-level model trained on tinyshakespeare that ships inside the package.
DEMO_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "assets", "tiny-shakespeare")
