"""rwkv_np: a CPU-only RWKV-4 engine on NumPy and Numba, faithful to Hugging Face transformers."""
__version__ = "0.1.0"

import os as _os

# Numba's OpenMP threads (GNU libgomp) spin after each parallel region, by default for 300,000
# rounds, and a decoded token runs ~50 regions. On a busy machine the spinning holds cores that
# other threads need. 169M fp32 token, 2 cores, median ms: idle 31 either way; beside a busy
# loop 65 -> 59; two rwkv_np processes at once 100 -> 69 each; beside a test run (its own
# OpenMP threads) 590 -> 58. So: a short spin, then sleep. libgomp reads this when it loads
# (Numba's first parallel call); the user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from .config import RwkvConfig
from .errors import ConfigError, InputError, ModelFileError, RwkvError
from .generation import GenerateOutput, TextStream, generate
from .linear import set_threads
from .model import RwkvCausalLMOutput, RwkvForCausalLM, RwkvModel, RwkvOutput
from .state_file import load_state, save_state
from .tokenizer import ByteTokenizer, StreamDecoder, Tokenizer

# The small byte-level model trained on tinyshakespeare that ships inside the package.
DEMO_MODEL = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "assets", "tiny-shakespeare")
