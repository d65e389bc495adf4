"""rwkv_np: a CPU-only RWKV-4 engine on NumPy and Numba, faithful to Hugging Face transformers."""
__version__ = "0.1.0"

from .config import RwkvConfig
from .errors import ConfigError, InputError, ModelFileError, RwkvError
from .model import RwkvCausalLMOutput, RwkvForCausalLM, RwkvModel, RwkvOutput
