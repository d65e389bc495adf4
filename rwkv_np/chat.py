"""`rwkv-np chat`: one message per line from a terminal or a pipe, answered with the state carried
from turn to turn.

A turn is fed as 'User: message\\n\\nBot:' and the answer ends at a blank line (or at
'\\nUser:'); World models (vocab 65536) are fed 'User: message\\n\\nAssistant:', the format
they were tuned on, and stop at a blank line. One random generator serves the whole
conversation (--seed seeds it once). Ctrl-C during an answer stops it and forgets that turn;
Ctrl-C at the prompt ends the program (exit 130), Ctrl-D or /quit ends it (exit 0). Lines that
start with / are commands (Conversation.command); // sends a line that starts with one /.
"""
from __future__ import annotations

import sys

from .cli_options import (Formatter, check_sampling, common_options, generation_kwargs, load, model_options,
                  print_piece, sampling_options)
from .errors import RwkvError

CHAT_HELP = ("/reset forgets the conversation, /save FILE and /load FILE store and restore it, /quit (or"
             " Ctrl-D) ends; Ctrl-C stops an answer")


def add_chat(sub):
    p = sub.add_parser("chat", help="interactive chat that keeps the state between turns",
                       formatter_class=Formatter,
                       parents=[common_options(), model_options(), sampling_options(200)],
                       description="Read one message per line from standard input (a terminal or a pipe)"
                                   " and answer it. Each turn is fed as '<user>: message\\n\\n<bot>:' and the"
                                   " answer ends at a blank line. The random generator is seeded once per"
                                   " conversation. A line starting with // is sent with one / less. "
                                   + CHAT_HELP + ".")
    p.add_argument("--user", default="User", help="name the messages are given under")
    p.add_argument("--bot", default=None,
                   help="name the answers are given under (default: Assistant for World models, vocab"
                        " 65536, as they were tuned; else Bot)")
    p.add_argument("--load-state", metavar="FILE", help="start from a saved conversation state")
    p.set_defaults(run=run_chat)


def run_chat(args) -> int:
    from .generation import TextStream
    from .world_vocab import WORLD_VOCAB_SIZE

    check_sampling(args)
    model, tokenizer = load(args)
    world = model.config.vocab_size == WORLD_VOCAB_SIZE  # the World chat format: User/Assistant
    bot = args.bot or ("Assistant" if world else "Bot")
    stops = ["\n\n"] if world else ["\n\n", f"\n{args.user}:"]
    options = generation_kwargs(args, model.config.vocab_size, stops)
    interactive = sys.stdin.isatty()
    chat = Conversation(model, args, bot)
    if interactive:
        print(f"rwkv-np chat. {CHAT_HELP}.", file=sys.stderr)
    while True:
        try:  # Ctrl-C here (at the prompt) ends the program: main() prints the newline
            line = input(f"{args.user}: ") if interactive else sys.stdin.readline()
        except EOFError:  # Ctrl-D at the prompt
            print_piece("\n")
            break
        if not interactive and line == "":
            break
        message = line.strip()
        if not message:
            continue
        if message.startswith("/") and not message.startswith("//"):
            if not chat.command(message):
                break
            continue
        message = message[1:] if message.startswith("//") else message
        prompt = ("\n\n" if chat.separate else "") + f"{args.user}: {message}\n\n{bot}:"
        stream = TextStream(model, tokenizer, prompt, state=chat.state, **dict(options, seed=chat.rng))
        print_piece(f"{bot}:")
        try:
            for piece in stream:
                print_piece(piece)
        except KeyboardInterrupt:  # Ctrl-C mid-answer: back to the prompt, the turn forgotten
            print_piece("\n[answer stopped; this turn is not kept]\n")
            continue
        print_piece("\n")
        chat.state = stream.output.state
        chat.separate = stream.output.stop_reasons[0] != "stop_string"  # no blank line ended it
    return 0


class Conversation:
    """The state of a chat between turns, and the /commands that act on it."""

    def __init__(self, model, args, bot: str):
        from .state_file import load_state

        self.model, self.args, self.bot = model, args, bot
        self.reset()
        if args.load_state:
            self.state = load_state(args.load_state, model)

    def reset(self) -> None:
        import numpy as np

        self.state = None
        self.separate = False  # True when the last answer did not end with a blank line
        self.rng = np.random.default_rng(self.args.seed)  # once per conversation, not per turn

    def command(self, message: str) -> bool:
        """Carry out a /command; False when the chat should end."""
        from .state_file import load_state, save_state

        command, _, operand = message.partition(" ")
        operand = operand.strip()
        if command in ("/quit", "/exit"):
            return False
        if command == "/reset":
            self.reset()
            say("[conversation reset]")
        elif command == "/help":
            say(f"[{CHAT_HELP}; start a message with // to send a line that begins with /]")
        elif command not in ("/save", "/load"):
            say(f"[unknown command {command}; /help lists the commands, // sends a line that begins with /]")
        elif not operand:
            say(f"[{command} needs a file name]")
        elif command == "/save" and self.state is None:
            say("[nothing to save yet]")
        else:
            try:  # a bad file must not end the conversation
                if command == "/save":
                    save_state(operand, self.state, self.model, {"user": self.args.user, "bot": self.bot})
                    say(f"[saved to {operand}]")
                else:
                    self.state, self.separate = load_state(operand, self.model), False
                    say(f"[loaded {operand}]")
            except RwkvError as e:
                say(f"[{e}]")
        return True


def say(text: str) -> None:
    print(text, flush=True)
