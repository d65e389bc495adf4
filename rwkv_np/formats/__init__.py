"""File formats rwkv_np reads and writes: safetensors, torch zip checkpoints, rwkv.cpp .bin."""
