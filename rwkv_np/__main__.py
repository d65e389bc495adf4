"""`python -m rwkv_np ...` is the `rwkv-np` command."""
from .cli import main

raise SystemExit(main())
