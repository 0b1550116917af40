"""Locally trained tokenizer for the builtin model (no hub download).

Byte-level BPE, so *any* text tokenizes without <unk> (users may point the
builtin model at their own data), but the merges are fit on the builtin corpus
so " a".." z" and the op words are single tokens and examples stay short.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]  # pad=0, bos=1, eos=2

# Every turn is "<|role|> content"; assistant turns end with eos. The
# generation prompt is exactly the "<|assistant|>" special token, and every
# turn boundary is a special token, so the rendering of messages[:i] (with
# add_generation_prompt) is a token-prefix of messages[:i+1]: the trainer
# relies on that to mask the loss to assistant tokens.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }} {{ message['content'] | trim }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

VOCAB_SIZE = 384  # 256 bytes + specials + the few merges the corpus supports (~70)


def train_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the template writes the space itself, so a
    # letter is always the same " x" token whether or not it starts the turn.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # No post-processor: BOS comes from the chat template only, so encoding a
    # rendered chat never gets a second BOS.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=ROLE_TOKENS,
        padding_side="right",
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
