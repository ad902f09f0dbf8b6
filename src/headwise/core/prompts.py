"""The reading prompt every task shares: an instruction, the context, then the question, in one user turn
of the model's chat template, so that the context's tokens sit between a fixed prefix and suffix."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PLACEHOLDER = "<<HEADWISE-CONTEXT>>"
INSTRUCTION = "Read the text below, then answer the question that follows it.\n\n"
ASK = "\n\nQuestion: {question}\nAnswer in one short sentence."


def chat_parts(tokenizer: PreTrainedTokenizerBase, message: str) -> tuple[str, str]:
    """The text before and after PLACEHOLDER once `message` is a user turn of the chat template (generation
    prompt included); without a template, the message after the BOS text and before an "Answer:" line."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = (tokenizer.bos_token or "") + message + "\nAnswer:"
    before, after = text.split(PLACEHOLDER)
    return before, after


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of `text`, without special tokens (the template supplies those)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reading_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> tuple[list[int], list[int]]:
    """(prefix ids, suffix ids): the prompt before and after the context for `question`."""
    before, after = chat_parts(tokenizer, INSTRUCTION + PLACEHOLDER + ASK.format(question=question))
    return encode(tokenizer, before), encode(tokenizer, after)
